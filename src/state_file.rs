//! The state file on disk: creating it atomically, locking it, recovering the cursor from it,
//! and committing a new cursor durably. Only the state owner thread calls `commit`.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cursor::Cursor;
use crate::error::{Cause, Error, Operation};
use crate::limits;
use crate::slot::{self, Recovered, Slot};

/// Where committed cursors go. The state owner is generic over it so tests can inject faults.
pub trait Storage {
    /// Makes `cursor` durable: when this returns `Ok`, a crash cannot lose it.
    fn commit(&mut self, cursor: Cursor) -> Result<(), Error>;
}

/// An open, locked state file and the sequence number of its newest slot. `F` is the file;
/// only tests put anything but a `File` there.
#[derive(Debug)]
pub struct StateFile<F = File> {
    file: F,
    path: PathBuf,
    sequence: u64,
}

/// What fibd does to its state file: a commit writes a slot and syncs it; start-up syncs and
/// reads. A trait, so that tests can run these against a simulated disk (`sim_disk.rs`) and
/// see what a power cut would leave: no test of a whole process can tell a synced write from
/// an unsynced one short of a power cut.
pub trait SlotFile {
    fn write_slot(&self, bytes: &[u8], offset: u64) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;
    /// The file's bytes as a read sees them (through the page cache), up to one byte past
    /// the size of a state file, so that an over-long file is noticed.
    fn read_cached(&self) -> io::Result<Vec<u8>>;
    /// The file's `slot::FILE_BYTES` as the disk holds them, read past the page cache, or
    /// `None` where they cannot be read that way (the platform or the file system at `path`
    /// offers no such read). An error if the read failed otherwise, or if `path` no longer
    /// names this file.
    fn read_from_disk(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
}

impl SlotFile for File {
    fn write_slot(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(bytes, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn read_cached(&self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(slot::FILE_BYTES + 1);
        self.take(slot::FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn read_from_disk(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let Some(direct) = open_direct(path) else {
            return Ok(None);
        };
        // The path must still name the locked file: read another's bytes, and commits would
        // go to one inode while the state came from another.
        let (ours, read) = (self.metadata()?, direct.metadata()?);
        if (ours.dev(), ours.ino()) != (read.dev(), read.ino()) {
            return Err(io::Error::other("the file was replaced during start-up"));
        }
        // Direct reads go to and from memory aligned to the device's block size, at most
        // `DIRECT_READ_ALIGN_BYTES`; the length and offset (8 KiB at 0) are aligned already.
        let mut buffer = vec![0u8; slot::FILE_BYTES + DIRECT_READ_ALIGN_BYTES];
        let start = buffer.as_ptr().align_offset(DIRECT_READ_ALIGN_BYTES);
        let Some(aligned) = buffer.get_mut(start..start + slot::FILE_BYTES) else {
            return Ok(None);
        };
        match direct.read_exact_at(aligned, 0) {
            Ok(()) => Ok(Some(aligned.to_vec())),
            // The file system takes the flag but not the read, or the device's blocks are
            // larger than the alignment: start-up takes the other way.
            Err(err) if direct_read_unsupported(&err) => Ok(None),
            // Anything else (EIO from a bad sector, most of all) is the disk failing the very
            // read that exists because a write may have failed before: falling back to the
            // cache would serve, and commit over, a slot that may never have been written.
            Err(err) => Err(err),
        }
    }
}

/// Whether a direct read failed because the file system or the device does not do it the way
/// it was asked (EINVAL, EOPNOTSUPP), rather than because the disk failed.
fn direct_read_unsupported(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(22 | 95))
}

/// `path` opened for reads past the page cache, or `None` where the platform or the file
/// system offers none (it refuses the flag, most often with EINVAL). Any failure here only
/// means start-up takes the other way (`StateFile::recover`), so none is an error.
fn open_direct(path: &Path) -> Option<File> {
    let flag = O_DIRECT?;
    OpenOptions::new()
        .read(true)
        .custom_flags(flag)
        .open(path)
        .ok()
}

/// Linux's `O_DIRECT`, whose value differs between architectures; `None` where this file
/// does not know it, and start-up then reads through the page cache.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86", target_arch = "x86_64", target_arch = "riscv64")
))]
const O_DIRECT: Option<i32> = Some(0o40_000);
#[cfg(all(target_os = "linux", any(target_arch = "aarch64", target_arch = "arm")))]
const O_DIRECT: Option<i32> = Some(0o200_000);
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "riscv64",
        target_arch = "aarch64",
        target_arch = "arm"
    )
)))]
const O_DIRECT: Option<i32> = None;

/// The alignment of a direct read's buffer: the largest logical block size of common disks.
const DIRECT_READ_ALIGN_BYTES: usize = 4096;

impl StateFile {
    /// Opens the state file at `path`, creating it (cursor at F(0)) if it does not exist,
    /// takes its exclusive lock, and recovers the newest valid slot. A file with no valid slot
    /// is an error and is left exactly as it was found.
    pub fn open(path: &Path) -> Result<(StateFile, Recovered), Error> {
        let file = match open_existing(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                create(path)?;
                open_existing(path).map_err(|e| Error::io(Operation::Open, path, e))?
            }
            Err(err) => return Err(Error::io(Operation::Open, path, err)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error {
                    operation: Operation::Lock,
                    path: path.to_path_buf(),
                    cause: Cause::Locked,
                });
            }
            Err(fs::TryLockError::Error(err)) => {
                return Err(Error::io(Operation::Lock, path, err));
            }
        }
        // The file's name is durable only once its directory is. Syncing it on every start,
        // not just after creating the file, covers a first start killed between the two:
        // steps acknowledged later must not live in a file whose name a power cut can undo.
        File::open(directory_of(path))
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::io(Operation::SyncDirectory, path, e))?;
        StateFile::recover(file, path)
    }
}

impl<F> StateFile<F> {
    /// The sequence number of the newest slot: after `open`, that of the start-up commit, one
    /// past the recovered slot's.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

#[cfg(test)]
impl<F> StateFile<F> {
    /// A state file over `file`, whose newest slot holds `sequence`: for tests, which bring a
    /// file of their own.
    pub(crate) fn over(file: F, sequence: u64) -> StateFile<F> {
        StateFile {
            file,
            path: PathBuf::from("simulated/fibd.state"),
            sequence,
        }
    }
}

impl<F: SlotFile> StateFile<F> {
    /// Recovers the newest valid slot of the locked `file`, and makes it durable before it is
    /// served; where the disk can be read directly, without writing over the only copy of an
    /// acknowledged step that the disk holds.
    ///
    /// A read goes through the page cache, which may hold what the disk does not: a process
    /// that died between a commit's write and its fdatasync (killed, or exiting because that
    /// fdatasync failed) leaves its slot there, and a restart a second later finds it. Served,
    /// it would show a state a power cut can take back. So: first, an fdatasync, which writes
    /// a slot still dirty in the cache. After a failed fdatasync, though, Linux may have marked
    /// the page clean without writing it, and an fdatasync has nothing to write; so, second,
    /// the slots are read past the cache (O_DIRECT), from the disk, and recovered from what is
    /// there (a step in the cache only was never acknowledged, and is dropped). Third, the
    /// recovered cursor is committed again, as every commit is: into the other slot, then
    /// fdatasync. After a real direct read that is the slot older on the disk, the one whose
    /// stale page the cache holds, so the commit overwrites that page too. The commit also
    /// makes what is served durable where the direct read was not one (some file systems take
    /// the flag and read through their cache all the same: ext4 with data=journal, NFS, FUSE).
    ///
    /// Where the direct read is unsupported, or silently cached, one case stays open: after a
    /// failed writeback, the recovered slot is the cache's, and the commit writes over the
    /// only on-disk copy of the last acknowledged step; a power cut that tears it (or the
    /// failing disk damaging it) loses that step, or leaves no valid slot. `known_gap_...` in
    /// the tests records it.
    fn recover(file: F, path: &Path) -> Result<(StateFile<F>, Recovered), Error> {
        file.sync_data()
            .map_err(|e| Error::io(Operation::Sync, path, e))?;
        let cached = file
            .read_cached()
            .map_err(|e| Error::io(Operation::Read, path, e))?;
        // A file of the wrong length is refused by `slot::recover`, from the cached read.
        let from_disk = match cached.len() {
            slot::FILE_BYTES => file
                .read_from_disk(path)
                .map_err(|e| Error::io(Operation::Read, path, e))?,
            _ => None,
        };
        let bytes = from_disk.unwrap_or(cached);
        let recovered = slot::recover(&bytes).map_err(|err| Error {
            operation: Operation::Recover,
            path: path.to_path_buf(),
            cause: Cause::Corrupt(err),
        })?;
        let mut state = StateFile {
            file,
            path: path.to_path_buf(),
            sequence: recovered.slot.sequence,
        };
        state.commit(recovered.slot.cursor)?;
        Ok((state, recovered))
    }
}

impl<F: SlotFile> Storage for StateFile<F> {
    fn commit(&mut self, cursor: Cursor) -> Result<(), Error> {
        // The sequence number only ever grows, and cannot run out at any real commit rate; only
        // from a file made by hand could it reach the last one (which recovery refuses, so that
        // such a file fails at recovery with its reason rather than here), and wrapping to 0
        // would make every later commit lose to it on recovery.
        let Some(sequence) = self.sequence.checked_add(1) else {
            let exhausted = io::Error::other("the sequence number is at its maximum");
            return Err(Error::io(Operation::Write, &self.path, exhausted));
        };
        let bytes = slot::encode(Slot { sequence, cursor });
        self.file
            .write_slot(&bytes, slot::offset_of(sequence))
            .map_err(|e| Error::io(Operation::Write, &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| Error::io(Operation::Sync, &self.path, e))?;
        self.sequence = sequence;
        Ok(())
    }
}

/// Opens the state file for reading and writing. Only a regular file will do: a FIFO or a
/// device opens, and would fail later with a message ("Invalid argument" from fdatasync) that
/// names no cause.
fn open_existing(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file (a fibd state file is a plain file of 8192 bytes)",
        ));
    }
    Ok(file)
}

/// Creates a new state file so that it appears whole or not at all: the initial contents go
/// to a private temporary file, are made durable, and are then hard-linked into place. Unlike
/// a rename, the link fails if the file already exists, so two servers started at once on a
/// missing file can never replace each other's file. `StateFile::open` then syncs the
/// directory, which makes the new name durable.
fn create(path: &Path) -> Result<(), Error> {
    let file_name = path.file_name().ok_or_else(|| {
        Error::io(
            Operation::Create,
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        )
    })?;
    // The name must be fresh, not just per process: two containers sharing a volume can both
    // run as pid 1, and one truncating the other's temporary file after it was linked into
    // place would erase a live state file. `write_new` never opens an existing file.
    let mut attempt = 0;
    let (temp, written) = loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let temp = directory_of(path).join(temp_name(file_name, std::process::id(), nanos));
        match write_new(&temp) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                attempt += 1;
                if attempt == limits::TEMP_NAME_ATTEMPTS_MAX {
                    return Err(Error::io(Operation::Create, path, e));
                }
            }
            written => break (temp, written),
        }
    };
    let result = written.and_then(|()| match fs::hard_link(&temp, path) {
        // Another server created it first; its file is as good as ours.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = fs::remove_file(&temp);
    result.map_err(|e| Error::io(Operation::Create, path, e))
}

/// The longest file name Linux's file systems take (NAME_MAX): ext4, XFS, btrfs, tmpfs and
/// overlayfs all allow 255 bytes.
const FILE_NAME_BYTES_MAX: usize = 255;

/// The temporary name for creating `file_name`: the state file's name, so that a leftover of
/// a crash is easy to attribute, then `.new.PID.NANOS`. The borrowed part is shortened when
/// needed, so that any state-file name that fits in a directory also has a temporary name
/// that fits.
fn temp_name(file_name: &OsStr, pid: u32, nanos: u32) -> OsString {
    let suffix = format!(".new.{pid}.{nanos}");
    let kept = file_name
        .len()
        .min(FILE_NAME_BYTES_MAX.saturating_sub(suffix.len()));
    let mut name = OsString::from_vec(file_name.as_bytes()[..kept].to_vec());
    name.push(suffix);
    name
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn write_new(temp: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        // The state is nobody else's business: owner read/write only.
        .mode(0o600)
        .open(temp)?;
    file.write_all_at(&slot::initial_file(), 0)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim_disk::{Dice, Op, SimDisk};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fibd-unit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_state_file_that_is_no_regular_file_is_refused_by_name() {
        let Err(err) = StateFile::open(Path::new("/dev/null")) else {
            panic!("/dev/null was taken for a state file");
        };
        let message = err.to_string();
        assert!(
            message.starts_with("cannot open state file /dev/null: it is not a regular file"),
            "{message}"
        );
    }

    #[test]
    fn creates_commits_and_recovers() {
        let dir = temp_dir("commit");
        let path = dir.join("fibd.state");
        let (mut state, recovered) = StateFile::open(&path).unwrap();
        assert_eq!(recovered.slot.cursor, Cursor::START);
        // Sequences 0 and 1 are the new file's; the start-up commit wrote 2.
        assert_eq!((recovered.slot.sequence, state.sequence()), (1, 2));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for index in [1, 2, 3, 2] {
            state.commit(Cursor::at(index).unwrap()).unwrap();
        }
        drop(state);
        let (state, recovered) = StateFile::open(&path).unwrap();
        assert_eq!(recovered.slot.cursor.index(), 2);
        // Sequences 3 to 6 are the commits, 7 the second start's.
        assert_eq!((recovered.slot.sequence, state.sequence()), (6, 7));
        drop(state);
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_file_name_as_long_as_the_file_system_allows_can_be_created() {
        let dir = temp_dir("long-name");
        let name = "f".repeat(FILE_NAME_BYTES_MAX);
        let path = dir.join(&name);
        let (mut state, recovered) = StateFile::open(&path).unwrap();
        assert_eq!(recovered.slot.cursor, Cursor::START);
        state.commit(Cursor::at(5).unwrap()).unwrap();
        drop(state);
        let (_, recovered) = StateFile::open(&path).unwrap();
        assert_eq!(recovered.slot.cursor.index(), 5);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from(name)], "temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_temporary_name_borrows_the_state_file_name_and_stays_within_name_max() {
        let short = temp_name(OsStr::new("fibd.state"), 4_194_304, 999_999_999);
        assert_eq!(short, "fibd.state.new.4194304.999999999");
        let long_name = "x".repeat(FILE_NAME_BYTES_MAX);
        let long = temp_name(OsStr::new(&long_name), 4_194_304, 999_999_999);
        assert_eq!(long.len(), FILE_NAME_BYTES_MAX);
        let long = long.to_str().unwrap();
        assert!(long.starts_with("xxxx"), "{long}");
        assert!(long.ends_with("x.new.4194304.999999999"), "{long}");
    }

    /// Records what a commit does to the file, and fails the fdatasync when told to.
    #[derive(Debug, Default)]
    struct Recorder {
        calls: std::cell::RefCell<Vec<String>>,
        sync_fails: bool,
    }

    impl SlotFile for Recorder {
        fn write_slot(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
            let call = format!("write {} bytes at {offset}", bytes.len());
            self.calls.borrow_mut().push(call);
            Ok(())
        }

        fn sync_data(&self) -> io::Result<()> {
            self.calls.borrow_mut().push("fdatasync".to_string());
            if self.sync_fails {
                return Err(io::Error::other("injected"));
            }
            Ok(())
        }

        fn read_cached(&self) -> io::Result<Vec<u8>> {
            unreachable!("commits do not read")
        }

        fn read_from_disk(&self, _path: &Path) -> io::Result<Option<Vec<u8>>> {
            unreachable!("commits do not read")
        }
    }

    #[test]
    fn a_commit_is_ok_only_after_its_slot_is_written_and_synced() {
        let mut state = StateFile {
            file: Recorder::default(),
            path: PathBuf::from("/x/fibd.state"),
            sequence: 7,
        };
        state.commit(Cursor::at(3).unwrap()).unwrap();
        state.commit(Cursor::at(4).unwrap()).unwrap();
        let slot_bytes = slot::encode(Slot {
            sequence: 8,
            cursor: Cursor::at(3).unwrap(),
        })
        .len();
        let (first, second) = (slot::offset_of(8), slot::offset_of(9));
        assert_ne!(first, second, "commits alternate between the slots");
        assert_eq!(
            *state.file.calls.borrow(),
            [
                format!("write {slot_bytes} bytes at {first}"),
                "fdatasync".to_string(),
                format!("write {slot_bytes} bytes at {second}"),
                "fdatasync".to_string(),
            ]
        );
        assert_eq!(state.sequence, 9);

        state.file.sync_fails = true;
        let err = state.commit(Cursor::at(5).unwrap()).unwrap_err();
        assert_eq!(err.operation, Operation::Sync);
        assert!(err.to_string().contains("/x/fibd.state"), "{err}");
        assert_eq!(state.sequence, 9, "a failed commit is not counted");
    }

    #[test]
    fn a_failed_fdatasync_is_never_retried() {
        let mut state = StateFile {
            file: Recorder {
                sync_fails: true,
                ..Recorder::default()
            },
            path: PathBuf::from("/x/fibd.state"),
            sequence: 7,
        };
        state.commit(Cursor::at(3).unwrap()).unwrap_err();
        assert_eq!(
            *state.file.calls.borrow(),
            [
                format!("write {} bytes at {}", slot::SLOT_BYTES, slot::offset_of(8)),
                "fdatasync".to_string()
            ],
            "one write, one fdatasync, nothing after the failure"
        );
    }

    #[test]
    fn an_over_long_file_is_refused_and_left_untouched() {
        let dir = temp_dir("overlong");
        let path = dir.join("fibd.state");
        let mut bytes = slot::initial_file();
        bytes.push(0);
        fs::write(&path, &bytes).unwrap();
        let err = StateFile::open(&path).unwrap_err();
        assert!(
            matches!(err.cause, Cause::Corrupt(slot::RecoverError::Length(n)) if n == slot::FILE_BYTES + 1),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), bytes);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_direct_read_of_a_path_that_names_another_file_is_an_error() {
        let dir = temp_dir("replaced");
        let path = dir.join("fibd.state");
        fs::write(&path, slot::initial_file()).unwrap();
        let file = File::open(&path).unwrap();
        let other = dir.join("other");
        fs::write(&other, slot::initial_file()).unwrap();
        fs::rename(&other, &path).unwrap();
        // Where direct reads work, the replaced file is refused; where they do not, nothing
        // is read. Never the other file's bytes.
        let read = file.read_from_disk(&path);
        if open_direct(&path).is_some() {
            assert!(read.is_err(), "{read:?}");
        } else {
            assert!(matches!(read, Ok(None)), "{read:?}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_last_sequence_number_is_refused_not_wrapped() {
        let mut state = StateFile {
            file: Recorder::default(),
            path: PathBuf::from("/x/fibd.state"),
            sequence: u64::MAX,
        };
        let err = state.commit(Cursor::at(3).unwrap()).unwrap_err();
        assert_eq!(err.operation, Operation::Write);
        assert!(state.file.calls.borrow().is_empty(), "nothing was written");
    }

    /// A disk whose file holds `index` at sequence 9, in slot 1, and `index - 1` at sequence
    /// 8, in slot 0 (each commit before moved the cursor by one, so each sequence has an index
    /// of its own): on the platter too unless `unsynced`, as a process killed between the
    /// last commit's write and its fdatasync leaves it. (Or, `marked_clean` as well, as a
    /// failed fdatasync may leave it: the cache holds what the platter never got, and nothing
    /// is left for a later fdatasync to write.)
    fn disk_at(index: u64, unsynced: bool, marked_clean: bool) -> SimDisk {
        let disk = SimDisk::new(&slot::initial_file());
        let mut state = StateFile::over(disk.clone(), 1);
        for sequence in 2..=8 {
            let index = (index + sequence).saturating_sub(9);
            state.commit(Cursor::at(index).unwrap()).unwrap();
        }
        let newest = slot::encode(Slot {
            sequence: 9,
            cursor: Cursor::at(index).unwrap(),
        });
        disk.write_slot(&newest, slot::offset_of(9)).unwrap();
        if !unsynced {
            disk.sync_data().unwrap();
        } else if marked_clean {
            disk.mark_clean();
        }
        disk
    }

    /// What a restart recovers from `disk`.
    fn restart(disk: &SimDisk) -> Result<Recovered, Error> {
        let path = Path::new("simulated/fibd.state");
        StateFile::recover(disk.clone(), path).map(|(_, recovered)| recovered)
    }

    /// A disk as `disk_at` makes it, read past its cache at start-up or (`direct` false) not.
    fn disk(direct: bool, unsynced: bool, marked_clean: bool) -> SimDisk {
        let disk = disk_at(5, unsynced, marked_clean);
        if direct {
            disk
        } else {
            disk.without_direct_reads()
        }
    }

    #[test]
    fn a_restart_serves_only_what_is_on_the_disk() {
        for direct in [true, false] {
            for (unsynced, marked_clean) in [(false, false), (true, false), (true, true)] {
                let case = format!("direct {direct}, unsynced {unsynced}, clean {marked_clean}");
                let disk = disk(direct, unsynced, marked_clean);
                let served = restart(&disk).unwrap().slot;
                let on_disk = slot::recover(&disk.platter()).unwrap().slot;
                assert_eq!(served.cursor, on_disk.cursor, "{case}");
                // Only a slot the cache holds and the disk never got is not served as it is:
                // dropped where the disk can be read, committed again where it cannot.
                let expected = if marked_clean && direct { 4 } else { 5 };
                assert_eq!(served.cursor.index(), expected, "{case}");
            }
        }
    }

    #[test]
    fn a_restart_syncs_first_and_never_writes_the_newest_slot_on_the_disk() {
        // The disk's newest slot is sequence 9 at position 1, but after a failed writeback
        // (marked clean) sequence 8 at position 0: the start-up commit goes to the other.
        for (direct, marked_clean, older) in [(true, false, 0), (false, false, 0), (true, true, 1)]
        {
            let disk = disk(direct, true, marked_clean);
            let before = disk.done().len();
            restart(&disk).unwrap();
            let done = &disk.done()[before..];
            assert_eq!(
                done,
                [Op::Sync, Op::Write(older), Op::Sync],
                "direct {direct}, clean {marked_clean}"
            );
        }
    }

    #[test]
    fn a_power_cut_during_a_restart_loses_nothing_acknowledged() {
        let mut dice = Dice(0x2545_F491_4F6C_DD1D);
        for round in 0..600 {
            // A process killed before its last fdatasync acknowledged only index 4; one that
            // synced it, index 5; one whose fdatasync failed (the page marked clean), index 4.
            let (unsynced, marked_clean) = [(false, false), (true, false), (true, true)][round % 3];
            // Without direct reads a page marked clean is the open case (`known_gap_...`).
            let direct = marked_clean || round % 2 == 0;
            let disk = disk(direct, unsynced, marked_clean);
            let acknowledged = if unsynced { 4 } else { 5 };
            disk.cut_power_after(dice.below(4));
            let _ = restart(&disk);
            disk.assert_power_cut_keeps(&mut dice, acknowledged, round);
        }
    }

    /// Records the case a start-up without direct reads leaves open, so that closing it shows.
    #[test]
    fn known_gap_a_torn_start_up_commit_after_a_failed_writeback_can_lose_a_step() {
        // Slot 0: sequence 8, index 4, acknowledged and on the disk. Slot 1: sequence 9,
        // index 5, in the cache only, its page marked clean after a failed fdatasync.
        let disk = disk(false, true, true);
        disk.cut_power_after(2); // the first fdatasync and the commit's write, not its sync
        assert!(restart(&disk).is_err());
        let garbled = disk.after_power_cut(|_| 2);
        let recovered = slot::recover(&garbled).unwrap().slot;
        assert_eq!(
            recovered.cursor.index(),
            3,
            "acknowledged index 4 lost, as the comment on StateFile::recover says"
        );
    }

    #[test]
    fn a_lone_valid_slot_is_never_written_over() {
        for direct in [true, false] {
            let mut file = slot::initial_file();
            file[..slot::SLOT_BYTES].fill(0xAB); // slot 0 damaged on the disk
            let disk = SimDisk::new(&file);
            let disk = if direct {
                disk
            } else {
                disk.without_direct_reads()
            };
            let recovered = restart(&disk).unwrap();
            assert!(recovered.other_slot_error.is_some());
            assert_eq!(disk.done(), [Op::Sync, Op::Write(0), Op::Sync]);
            assert_eq!(disk.platter()[slot::SLOT_BYTES..], file[slot::SLOT_BYTES..]);
        }
    }

    #[test]
    fn a_failed_start_up_sync_or_commit_is_an_error_naming_the_file() {
        for (direct, power_for, operation) in [
            (true, 0, Operation::Sync),
            (false, 0, Operation::Sync),
            (true, 1, Operation::Write),
            (false, 1, Operation::Write),
        ] {
            let disk = disk(direct, true, false);
            disk.cut_power_after(power_for);
            let err = restart(&disk).unwrap_err();
            assert_eq!(err.operation, operation);
            assert!(err.to_string().contains("simulated/fibd.state"), "{err}");
        }
    }

    /// The type of the file system mounted at the longest prefix of `dir`.
    fn file_system_of(dir: &Path) -> String {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        let mut best = ("", "");
        for line in mounts.lines() {
            let mut fields = line.split(' ').skip(1);
            let (point, kind) = (fields.next().unwrap(), fields.next().unwrap());
            if dir.starts_with(point) && point.len() >= best.0.len() {
                best = (point, kind);
            }
        }
        best.1.to_string()
    }

    #[test]
    fn a_direct_read_of_a_real_file_sees_its_bytes_through_an_o_direct_descriptor() {
        let dir = temp_dir("direct");
        let path = dir.join("fibd.state");
        let bytes = slot::initial_file();
        fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(file.read_cached().unwrap(), bytes);
        // ext4, XFS and btrfs read directly; this machine's temporary directory is on one.
        let kind = file_system_of(&fs::canonicalize(&dir).unwrap());
        let read = file.read_from_disk(&path).unwrap();
        if ["ext4", "xfs", "btrfs"].contains(&kind.as_str()) {
            assert_eq!(read.as_deref(), Some(&bytes[..]), "a direct read on {kind}");
            // The descriptor really has O_DIRECT: its flags, in octal, in /proc.
            let direct = open_direct(&path).expect("opens with O_DIRECT");
            let fdinfo = format!("/proc/self/fdinfo/{}", direct.as_raw_fd());
            let info = fs::read_to_string(fdinfo).unwrap();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap();
            let flags = i32::from_str_radix(flags.trim(), 8).unwrap();
            assert_ne!(flags & O_DIRECT.unwrap(), 0, "flags {flags:o} on {kind}");
        } else if let Some(read) = read {
            assert_eq!(read, bytes);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_file_is_never_written_over_an_existing_one() {
        let dir = temp_dir("create-new");
        let taken = dir.join("fibd.state.new.1");
        fs::write(&taken, b"someone else's").unwrap();
        let err = write_new(&taken).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&taken).unwrap(), b"someone else's");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_open_is_refused_by_the_lock() {
        let dir = temp_dir("lock");
        let path = dir.join("fibd.state");
        let (_held, _) = StateFile::open(&path).unwrap();
        let err = StateFile::open(&path).unwrap_err();
        assert!(matches!(err.cause, Cause::Locked), "{err}");
        assert!(err.to_string().contains("fibd.state"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_refused_and_left_untouched() {
        let dir = temp_dir("corrupt");
        let path = dir.join("fibd.state");
        let garbage: Vec<u8> = (0..slot::FILE_BYTES).map(|i| (i * 7) as u8).collect();
        fs::write(&path, &garbage).unwrap();
        let err = StateFile::open(&path).unwrap_err();
        assert!(matches!(err.cause, Cause::Corrupt(_)), "{err}");
        assert_eq!(fs::read(&path).unwrap(), garbage);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let path = Path::new("/nonexistent-fibd-dir/fibd.state");
        let err = StateFile::open(path).unwrap_err();
        assert_eq!(err.operation, Operation::Create);
        assert!(
            err.to_string().contains("/nonexistent-fibd-dir/fibd.state"),
            "{err}"
        );
    }
}
