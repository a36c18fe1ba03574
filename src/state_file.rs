//! The state file on disk: creating it atomically, locking it, recovering the cursor from it,
//! and committing a new cursor durably. Only the state owner thread calls `commit`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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

/// The two things a commit does to the file. A trait, so that a test can see that the
/// fdatasync follows the write, and that a commit whose fdatasync fails is not `Ok`: no test
/// of a whole process can tell a synced write from an unsynced one short of a power cut.
pub trait SlotFile {
    fn write_slot(&self, bytes: &[u8], offset: u64) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;
}

impl SlotFile for File {
    fn write_slot(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(bytes, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
}

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
        let mut bytes = Vec::with_capacity(slot::FILE_BYTES);
        // Read one byte past the expected size so an over-long file is noticed too.
        (&file)
            .take(slot::FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(Operation::Read, path, e))?;
        let recovered = slot::recover(&bytes).map_err(|err| Error {
            operation: Operation::Recover,
            path: path.to_path_buf(),
            cause: Cause::Corrupt(err),
        })?;
        settle(&file, &bytes, &recovered, path)?;
        let state = StateFile {
            file,
            path: path.to_path_buf(),
            sequence: recovered.slot.sequence,
        };
        Ok((state, recovered))
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

/// Makes the recovered slot durable before anything is served from it or written beside it.
///
/// The bytes just read came from the page cache, not necessarily from the disk. A process
/// that died between a commit's write and its fdatasync (killed, or exiting because that
/// fdatasync failed) leaves the slot in the cache only, and a restart finds it there: serving
/// it would show a state a power cut can take back, and the first commit would overwrite the
/// other slot, which may be the only one on disk. An fdatasync covers a slot still dirty in
/// the cache. After a failed fdatasync, though, Linux may have marked the page clean without
/// writing it, leaving a later fdatasync nothing to write; so when the other slot is valid too,
/// the recovered slot is first written again, byte for byte. Should that write tear, the other
/// slot is the fallback, and it holds everything acknowledged, since a step is acknowledged
/// only after its own slot was synced. A lone valid slot is not rewritten: a torn rewrite
/// would leave no valid slot at all, and a lone slot was read from the disk (its neighbour is
/// damaged on the disk, or the file is new and was synced before it got its name).
fn settle<F: SlotFile>(
    file: &F,
    bytes: &[u8],
    recovered: &Recovered,
    path: &Path,
) -> Result<(), Error> {
    if recovered.other_slot_error.is_none() {
        let offset = slot::offset_of(recovered.slot.sequence);
        let start = usize::try_from(offset).expect("a slot offset fits in memory");
        file.write_slot(&bytes[start..start + slot::SLOT_BYTES], offset)
            .map_err(|e| Error::io(Operation::Write, path, e))?;
    }
    file.sync_data()
        .map_err(|e| Error::io(Operation::Sync, path, e))
}

impl<F: SlotFile> Storage for StateFile<F> {
    fn commit(&mut self, cursor: Cursor) -> Result<(), Error> {
        // The sequence number only ever grows, and cannot run out at any real commit rate;
        // only a file made by hand could hold the last one, and wrapping to 0 would make every
        // later commit lose to it on recovery.
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

fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
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
        let mut temp_name = file_name.to_os_string();
        temp_name.push(format!(".new.{}.{nanos}", std::process::id()));
        let temp = directory_of(path).join(temp_name);
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
    use crate::sim_disk::SimDisk;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fibd-unit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn creates_commits_and_recovers() {
        let dir = temp_dir("commit");
        let path = dir.join("fibd.state");
        let (mut state, recovered) = StateFile::open(&path).unwrap();
        assert_eq!(recovered.slot.cursor, Cursor::START);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for index in [1, 2, 3, 2] {
            state.commit(Cursor::at(index).unwrap()).unwrap();
        }
        drop(state);
        let (_, recovered) = StateFile::open(&path).unwrap();
        assert_eq!(recovered.slot.cursor.index(), 2);
        assert_eq!(recovered.slot.sequence, 5);
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
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

    /// The file as a commit of `index` at `sequence` leaves it in the page cache, before its
    /// fdatasync: on a disk that held `durable_index` at the sequence before.
    fn unsynced_commit(durable_index: u64, index: u64, sequence: u64) -> SimDisk {
        let disk = SimDisk::new(&slot::initial_file());
        let mut state = StateFile::over(disk.clone(), 1);
        while state.sequence + 1 < sequence {
            state.commit(Cursor::at(durable_index).unwrap()).unwrap();
        }
        let slot = Slot {
            sequence,
            cursor: Cursor::at(index).unwrap(),
        };
        disk.write_slot(&slot::encode(slot), slot::offset_of(sequence))
            .unwrap();
        disk
    }

    #[test]
    fn a_restart_makes_the_slot_it_recovered_durable_before_serving_it() {
        // Killed between a commit's write and its fdatasync, the slot is dirty in the cache;
        // after a failed fdatasync Linux may instead have marked it clean, never written.
        for marked_clean in [false, true] {
            let disk = unsynced_commit(4, 5, 9);
            if marked_clean {
                disk.mark_clean();
            }
            let bytes = disk.cache();
            let recovered = slot::recover(&bytes).unwrap();
            assert_eq!(
                recovered.slot.cursor.index(),
                5,
                "the restart reads the cache"
            );
            let on_platter = slot::recover(&disk.platter()).unwrap().slot;
            assert_eq!(on_platter.cursor.index(), 4, "the test's premise");

            settle(&disk, &bytes, &recovered, Path::new("sim/fibd.state")).unwrap();
            let on_platter = slot::recover(&disk.platter()).unwrap().slot;
            assert_eq!(
                on_platter, recovered.slot,
                "what is served after a restart is on the disk (marked clean: {marked_clean})"
            );
        }
    }

    #[test]
    fn a_lone_valid_slot_is_synced_but_never_rewritten() {
        let mut file = slot::initial_file();
        file[..slot::SLOT_BYTES].fill(0xAB); // slot 0 damaged on the disk
        let disk = SimDisk::new(&file);
        let recovered = slot::recover(&file).unwrap();
        assert!(recovered.other_slot_error.is_some());
        settle(&disk, &file, &recovered, Path::new("sim/fibd.state")).unwrap();
        assert_eq!(disk.writes(), 0, "a torn rewrite would leave no valid slot");
        assert_eq!(disk.platter(), file);
    }

    #[test]
    fn a_failed_settle_is_an_error_naming_the_file() {
        let disk = unsynced_commit(4, 5, 9);
        disk.cut_power_after(1); // the rewrite goes through, its fdatasync fails
        let bytes = disk.cache();
        let recovered = slot::recover(&bytes).unwrap();
        let err = settle(&disk, &bytes, &recovered, Path::new("sim/fibd.state")).unwrap_err();
        assert_eq!(err.operation, Operation::Sync);
        assert!(err.to_string().contains("sim/fibd.state"), "{err}");
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
