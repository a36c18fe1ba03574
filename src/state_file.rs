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
        let mut state = StateFile {
            file,
            path: path.to_path_buf(),
            sequence: recovered.slot.sequence,
        };
        state.settle(recovered.slot.cursor)?;
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

impl<F: SlotFile> StateFile<F> {
    /// Makes the recovered `cursor` durable before anything is served from it.
    ///
    /// The slot just read came from the page cache, not necessarily from the disk. A process
    /// that died between a commit's write and its fdatasync (killed, or exiting because that
    /// fdatasync failed) leaves the slot in the cache only, and a restart finds it there:
    /// serving it would show a state a power cut can take back, and the next commit would
    /// overwrite the other slot, which may be the only one on disk. So, first, an fdatasync:
    /// it writes a slot still dirty in the cache, before anything is written beside it. After
    /// a failed fdatasync, though, Linux may have marked the page clean without writing it,
    /// and that fdatasync has nothing to write; so, second, the cursor is committed again, as
    /// any commit is: into the older slot, then fdatasync. The newest slot is never written,
    /// so a power cut now leaves it as it was.
    ///
    /// One case stays open. After a failed writeback the cache's newest slot is not on the
    /// disk, and the older slot holds the last acknowledged step, the only copy of it. This
    /// commit writes over that slot, as the first step's commit did before start-up committed
    /// at all, and until its fdatasync returns the disk holds that step nowhere: a power cut
    /// that tears the write, or the failing disk damaging it, loses the step, or leaves no
    /// valid slot if the failed writeback had torn the other one. The window spans restarts
    /// (a kill after this write, then a power cut during the next start's first fdatasync).
    /// It takes a disk that has already failed a writeback. Reading the slots back from the
    /// disk itself (O_DIRECT) after the first fdatasync, and serving what is there, would
    /// close it; see `known_gap_...` in the tests.
    fn settle(&mut self, cursor: Cursor) -> Result<(), Error> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(Operation::Sync, &self.path, e))?;
        self.commit(cursor)
    }
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
    use crate::sim_disk::{Dice, Op, SimDisk};
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
        // Sequences 0 and 1 are the new file's, 2 its first start's, 3 to 6 the commits.
        assert_eq!(recovered.slot.sequence, 6);
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

    /// What a restart recovers from `disk`, and the state file it then settles.
    fn restart(disk: &SimDisk) -> (Recovered, Result<(), Error>) {
        let recovered = slot::recover(&disk.cache()).unwrap();
        let mut state = StateFile::over(disk.clone(), recovered.slot.sequence);
        let settled = state.settle(recovered.slot.cursor);
        (recovered, settled)
    }

    #[test]
    fn a_restart_makes_the_state_it_recovered_durable_before_serving_it() {
        for marked_clean in [false, true] {
            let disk = disk_at(5, true, marked_clean);
            let durable = slot::recover(&disk.platter()).unwrap().slot;
            assert_eq!(durable.cursor.index(), 4, "the test's premise");
            let (recovered, settled) = restart(&disk);
            assert_eq!(
                recovered.slot.cursor.index(),
                5,
                "a restart reads the cache"
            );
            settled.unwrap();
            let durable = slot::recover(&disk.platter()).unwrap().slot;
            assert_eq!(
                durable.cursor, recovered.slot.cursor,
                "what a restart serves is on the disk (marked clean: {marked_clean})"
            );
        }
    }

    #[test]
    fn a_restart_syncs_first_and_never_writes_the_newest_slot() {
        let disk = disk_at(5, false, false);
        let before = disk.done().len();
        restart(&disk).1.unwrap();
        // The newest slot, sequence 9, is at position 1: the commit goes to position 0.
        assert_eq!(disk.done()[before..], [Op::Sync, Op::Write(0), Op::Sync]);
    }

    #[test]
    fn a_power_cut_during_a_restart_loses_nothing_acknowledged() {
        let mut dice = Dice(0x2545_F491_4F6C_DD1D);
        for round in 0..300 {
            // A process killed before its last fdatasync acknowledged only index 4; one that
            // synced it, index 5.
            let unsynced = round % 2 == 0;
            let disk = disk_at(5, unsynced, false);
            let acknowledged = if unsynced { 4 } else { 5 };
            disk.cut_power_after(dice.below(4));
            let _ = restart(&disk);
            disk.assert_power_cut_keeps(&mut dice, acknowledged, round);
        }
    }

    /// Records the case `settle` leaves open, so that closing it shows here.
    #[test]
    fn known_gap_a_torn_start_up_commit_after_a_failed_writeback_can_lose_a_step() {
        // Slot 0: sequence 8, index 4, acknowledged and on the disk. Slot 1: sequence 9,
        // index 5, in the cache only, its page marked clean after a failed fdatasync.
        let disk = disk_at(5, true, true);
        disk.cut_power_after(2); // the first fdatasync and the commit's write, not its sync
        assert!(restart(&disk).1.is_err());
        let garbled = disk.after_power_cut(|_| 2);
        let recovered = slot::recover(&garbled).unwrap().slot;
        assert_eq!(
            recovered.cursor.index(),
            3,
            "acknowledged index 4 lost, as the comment on settle says"
        );
    }

    #[test]
    fn a_lone_valid_slot_is_never_written_over() {
        let mut file = slot::initial_file();
        file[..slot::SLOT_BYTES].fill(0xAB); // slot 0 damaged on the disk
        let disk = SimDisk::new(&file);
        let (recovered, settled) = restart(&disk);
        assert!(recovered.other_slot_error.is_some());
        settled.unwrap();
        assert_eq!(disk.done(), [Op::Sync, Op::Write(0), Op::Sync]);
        assert_eq!(disk.platter()[slot::SLOT_BYTES..], file[slot::SLOT_BYTES..]);
        assert!(
            slot::recover(&disk.platter())
                .unwrap()
                .other_slot_error
                .is_none()
        );
    }

    #[test]
    fn a_failed_settle_is_an_error_naming_the_file() {
        for (power_for, operation) in [(0, Operation::Sync), (1, Operation::Write)] {
            let disk = disk_at(5, true, false);
            disk.cut_power_after(power_for);
            let err = restart(&disk).1.unwrap_err();
            assert_eq!(err.operation, operation);
            assert!(err.to_string().contains("simulated/fibd.state"), "{err}");
        }
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
