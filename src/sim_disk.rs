//! A simulated disk for tests of durability: a write lands in a page cache and reaches the
//! platter only when synced, so a test can cut the power between the two, or restart from
//! what the cache holds, and see exactly what a real disk would have kept. Test-only.

use std::cell::RefCell;
use std::io;
use std::path::Path;
use std::rc::Rc;

use crate::slot::{self, SLOT_BYTES};
use crate::state_file::SlotFile;

/// A handle to one simulated state file; clones share it, so a test keeps one while the code
/// under test owns another.
#[derive(Clone, Debug)]
pub struct SimDisk {
    disk: Rc<RefCell<Disk>>,
}

#[derive(Debug)]
struct Disk {
    /// What reads see: the platter with every write since applied.
    cache: Vec<u8>,
    /// What survives a power cut.
    platter: Vec<u8>,
    /// The slots written since the last sync, which a sync copies to the platter.
    dirty: [bool; 2],
    /// Writes and syncs left before the power goes; `None` keeps it on.
    power_left: Option<usize>,
    /// Every write and sync done, in order.
    done: Vec<Op>,
    /// Whether a read past the cache (O_DIRECT) works, as it does on most file systems.
    direct_reads: bool,
}

/// One thing done to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A write of the slot at this position.
    Write(usize),
    Sync,
}

impl SimDisk {
    /// A disk holding `file`, in the cache and on the platter alike.
    pub fn new(file: &[u8]) -> SimDisk {
        SimDisk {
            disk: Rc::new(RefCell::new(Disk {
                cache: file.to_vec(),
                platter: file.to_vec(),
                dirty: [false; 2],
                power_left: None,
                done: Vec::new(),
                direct_reads: true,
            })),
        }
    }

    /// Makes reads past the cache fail as unsupported, as on a file system without O_DIRECT.
    pub fn without_direct_reads(self) -> SimDisk {
        self.disk.borrow_mut().direct_reads = false;
        self
    }

    /// Lets `operations` more writes or syncs through; every one after fails, as if the
    /// machine had lost power (a dead machine returns nothing, but what the code under test
    /// does after that point is never seen by anyone).
    pub fn cut_power_after(&self, operations: usize) {
        self.disk.borrow_mut().power_left = Some(operations);
    }

    /// What a process reading the file now would see.
    pub fn cache(&self) -> Vec<u8> {
        self.disk.borrow().cache.clone()
    }

    /// What is durably on the disk now.
    pub fn platter(&self) -> Vec<u8> {
        self.disk.borrow().platter.clone()
    }

    /// Every write and sync done so far, in order.
    pub fn done(&self) -> Vec<Op> {
        self.disk.borrow().done.clone()
    }

    /// Forgets that the cache holds writes the platter lacks, as Linux may after a failed
    /// writeback: the page is marked clean, and a later sync has nothing to write.
    pub fn mark_clean(&self) {
        self.disk.borrow_mut().dirty = [false; 2];
    }

    /// The platter as a power cut now would leave it. The disk may have written back any
    /// unsynced slot on its own before the power went, or not started it, or been part way:
    /// `pick(3)` chooses, for each such slot, the old bytes (0), the new ones (1), or a slot
    /// that no longer reads as one (2). A tear at a sector boundary is one of the first two,
    /// since a slot's header and checksum sit in its first sector; within a sector, or on a
    /// disk that garbles what it was writing, it is the third.
    pub fn after_power_cut(&self, mut pick: impl FnMut(usize) -> usize) -> Vec<u8> {
        let disk = self.disk.borrow();
        let mut platter = disk.platter.clone();
        for position in (0..2).filter(|&position| disk.dirty[position]) {
            let slot = position * SLOT_BYTES..(position + 1) * SLOT_BYTES;
            match pick(3) {
                0 => {}
                1 => platter[slot.clone()].copy_from_slice(&disk.cache[slot]),
                _ => platter[slot].fill(0xA5),
            }
        }
        platter
    }

    /// Cuts the power now (`after_power_cut`, each choice thrown by `dice`) and checks that what
    /// is left recovers to a state holding every step acknowledged: for tests whose steps only
    /// go forward, an index of at least `acknowledged`. `round` names the case in a failure.
    pub fn assert_power_cut_keeps(&self, dice: &mut Dice, acknowledged: u8, round: usize) {
        let after = self.after_power_cut(|n| dice.below(n));
        let recovered = slot::recover(&after)
            .unwrap_or_else(|e| panic!("round {round}: nothing to recover: {e}"));
        assert!(
            recovered.slot.cursor.index() >= acknowledged,
            "round {round}: recovered {} after acknowledging {acknowledged}",
            recovered.slot.cursor.index()
        );
    }
}

impl Disk {
    fn use_power(&mut self) -> io::Result<()> {
        match &mut self.power_left {
            Some(0) => Err(io::Error::other("the power is off")),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl SlotFile for SimDisk {
    fn write_slot(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        disk.use_power()?;
        let start = usize::try_from(offset).expect("offset fits");
        assert!(
            start % SLOT_BYTES == 0 && bytes.len() == SLOT_BYTES,
            "a write is one whole slot"
        );
        disk.cache[start..start + SLOT_BYTES].copy_from_slice(bytes);
        disk.dirty[start / SLOT_BYTES] = true;
        disk.done.push(Op::Write(start / SLOT_BYTES));
        Ok(())
    }

    fn read_cached(&self) -> io::Result<Vec<u8>> {
        Ok(self.cache())
    }

    fn read_from_disk(&self, _path: &Path) -> io::Result<Option<Vec<u8>>> {
        let disk = self.disk.borrow();
        Ok(disk.direct_reads.then(|| disk.platter.clone()))
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        disk.use_power()?;
        disk.done.push(Op::Sync);
        for position in 0..2 {
            if std::mem::take(&mut disk.dirty[position]) {
                let range = position * SLOT_BYTES..(position + 1) * SLOT_BYTES;
                let synced = disk.cache[range.clone()].to_vec();
                disk.platter[range].copy_from_slice(&synced);
            }
        }
        Ok(())
    }
}

/// A small deterministic generator (xorshift64*) for where the power goes, so every run of a
/// test cuts at the same points.
pub struct Dice(pub u64);

impl Dice {
    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}
