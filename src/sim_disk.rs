//! A simulated disk for tests of durability: a write lands in a page cache and reaches the
//! platter only when synced, so a test can cut the power between the two, or restart from
//! what the cache holds, and see exactly what a real disk would have kept. Test-only.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use crate::slot::SLOT_BYTES;
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
    writes: usize,
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
                writes: 0,
            })),
        }
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

    /// Writes done so far.
    pub fn writes(&self) -> usize {
        self.disk.borrow().writes
    }

    /// Forgets that the cache holds writes the platter lacks, as Linux may after a failed
    /// writeback: the page is marked clean, and a later sync has nothing to write.
    pub fn mark_clean(&self) {
        self.disk.borrow_mut().dirty = [false; 2];
    }

    /// The platter as a power cut now would leave it: the disk may have written back any
    /// unsynced slot on its own, or not, or torn it. `cut(n)` picks, below `n`, how many of
    /// the slot's new bytes reached the platter before the power went.
    pub fn after_power_cut(&self, mut cut: impl FnMut(usize) -> usize) -> Vec<u8> {
        let disk = self.disk.borrow();
        let mut platter = disk.platter.clone();
        for position in (0..2).filter(|&position| disk.dirty[position]) {
            let start = position * SLOT_BYTES;
            let written = cut(SLOT_BYTES + 1);
            platter[start..start + written].copy_from_slice(&disk.cache[start..start + written]);
        }
        platter
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
        disk.writes += 1;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        disk.use_power()?;
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
