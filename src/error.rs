//! The one error type for operating errors on the state file: every message names the file
//! and the operation that failed, so a log line alone tells the operator what to look at.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::slot::RecoverError;

/// What was being done when the error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Open,
    Lock,
    Read,
    Recover,
    Write,
    Sync,
    SyncDirectory,
}

impl Operation {
    fn verb(self) -> &'static str {
        match self {
            Operation::Create => "create state file",
            Operation::Open => "open state file",
            Operation::Lock => "lock state file",
            Operation::Read => "read state file",
            Operation::Recover => "recover state from",
            Operation::Write => "write state file",
            Operation::Sync => "fdatasync state file",
            Operation::SyncDirectory => "fsync directory of state file",
        }
    }
}

#[derive(Debug)]
pub enum Cause {
    Io(io::Error),
    /// Another process holds the exclusive lock.
    Locked,
    /// The bytes on disk hold no usable state.
    Corrupt(RecoverError),
}

/// An operating error on the state file.
#[derive(Debug)]
pub struct Error {
    pub operation: Operation,
    pub path: PathBuf,
    pub cause: Cause,
}

impl Error {
    pub fn io(operation: Operation, path: &Path, err: io::Error) -> Error {
        Error {
            operation,
            path: path.to_path_buf(),
            cause: Cause::Io(err),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: ",
            self.operation.verb(),
            self.path.display()
        )?;
        match &self.cause {
            Cause::Io(err) => write!(f, "{err}"),
            Cause::Locked => write!(
                f,
                "another fibd process holds its lock (one server per state file)"
            ),
            Cause::Corrupt(err @ RecoverError::OtherVersion { .. }) => write!(
                f,
                "{err}; the file was left untouched: run the version of fibd that wrote it, or \
                 restore the backup taken before the upgrade"
            ),
            Cause::Corrupt(err) => write!(
                f,
                "{err}; the file was left untouched: restore it from a backup, or move it \
                 aside to start again from F(0)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Io(err) => Some(err),
            _ => None,
        }
    }
}
