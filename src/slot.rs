//! The on-disk format of the state file: two fixed-size slots, each a checksummed record of
//! (sequence number, cursor index). Bytes in, `Result` out; this module does no I/O.
//!
//! Like LMDB's two meta pages, a write always goes to the older slot, so the newer one stays
//! intact if the write is torn by a crash. Recovery reads both and keeps the valid slot with
//! the highest sequence number. Slot `p` only ever holds sequence numbers `s` with
//! `s % 2 == p`, which makes "which slot is older" a function of the sequence alone.
//!
//! Layout of one slot (little-endian), padded with zeros to `SLOT_BYTES`:
//!
//! | offset | size | field                                          |
//! |--------|------|------------------------------------------------|
//! | 0      | 8    | magic `FIBDSLOT`                               |
//! | 8      | 4    | format version (1)                             |
//! | 12     | 8    | sequence number                                |
//! | 20     | 8    | cursor index (0..=186)                         |
//! | 28     | 4    | CRC-32C of bytes 0..28                         |
//! | 32     | 4064 | zeros                                          |
//!
//! The first 32 bytes are the envelope every format version keeps: magic, version, and a
//! CRC-32C of bytes 0..28. A crash can tear a slot, but a slot whose envelope is intact was
//! written whole: whatever else is wrong with it came from somewhere other than a crash.
//! - Another version: another fibd wrote it, and the file is refused rather than have that
//!   slot overwritten as if it were torn (a rollback after an upgrade would otherwise
//!   silently lose the steps the newer version recorded).
//! - What fibd never writes (an index past the table, a sequence in the other slot's
//!   position, the last sequence number) in a slot newer than the valid one: refused too, since
//!   falling back to the older slot could lose acknowledged steps. In an older slot it is only
//!   reported, and the next commit writes over it.
//! - Non-zero padding: the record itself is covered by the checksum and is read; the damage
//!   is reported (`Recovered::padding_faults`), and the slot's next commit rewrites it.

use std::fmt;

use crate::cursor::Cursor;

/// One slot per 4 KiB page, so a torn write of one slot can never touch the other, even on
/// drives with 4 KiB physical sectors.
pub const SLOT_BYTES: usize = 4096;

/// Two slots, nothing else: any other length means the file is not (or no longer) ours.
pub const FILE_BYTES: usize = 2 * SLOT_BYTES;

const MAGIC: [u8; 8] = *b"FIBDSLOT";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 28;
const CHECKSUM_END: usize = HEADER_BYTES + 4;

/// What one slot records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub sequence: u64,
    pub cursor: Cursor,
}

/// Why a slot was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotError {
    Magic,
    Version(u32),
    Checksum {
        stored: u32,
        computed: u32,
    },
    Padding {
        offset: usize,
    },
    Index(u64),
    Position {
        sequence: u64,
        position: usize,
    },
    /// `u64::MAX`, after which no commit can follow. fibd would need billions of years of
    /// commits to write it, so only a hand-made or damaged file holds it.
    LastSequence,
}

impl SlotError {
    /// Whether the slot's envelope (magic, version, checksum) is intact, so that it was
    /// written whole and no crash made it so.
    pub fn written_whole(&self) -> bool {
        matches!(
            self,
            SlotError::Padding { .. }
                | SlotError::Index(_)
                | SlotError::Position { .. }
                | SlotError::LastSequence
        )
    }
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotError::Magic => write!(f, "bad magic (not a fibd state slot)"),
            SlotError::Version(v) => {
                write!(
                    f,
                    "unsupported format version {v} (this fibd reads {VERSION})"
                )
            }
            SlotError::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            SlotError::Padding { offset } => {
                write!(f, "non-zero byte in the padding at offset {offset}")
            }
            SlotError::Index(i) => write!(f, "cursor index {i} is past F(186)"),
            SlotError::Position { sequence, position } => {
                write!(f, "sequence {sequence} does not belong in slot {position}")
            }
            SlotError::LastSequence => write!(
                f,
                "sequence {} is the last one, and no commit could follow it",
                u64::MAX
            ),
        }
    }
}

/// Why no state could be recovered from a file's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoverError {
    Length(usize),
    NoValidSlot([SlotError; 2]),
    /// A slot of another format version, intact: another fibd wrote it.
    OtherVersion {
        position: usize,
        version: u32,
    },
    /// A slot written whole, holding what fibd never writes, and newer than the valid slot:
    /// serving the valid one could lose the steps the damaged one recorded.
    Damaged {
        position: usize,
        sequence: u64,
        error: SlotError,
    },
}

impl fmt::Display for RecoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoverError::Length(len) => write!(
                f,
                "file is {len} bytes, a fibd state file is exactly {FILE_BYTES}: \
                 it was truncated or is not a fibd state file"
            ),
            RecoverError::NoValidSlot([a, b]) => {
                write!(f, "no valid slot: slot 0: {a}; slot 1: {b}")
            }
            RecoverError::OtherVersion { position, version } => write!(
                f,
                "slot {position}: {}, written by another version of fibd",
                SlotError::Version(*version)
            ),
            RecoverError::Damaged {
                position,
                sequence,
                error,
            } => write!(
                f,
                "slot {position}: {error}, though its checksum holds: it was damaged or \
                 written by something other than fibd, not torn by a crash, and its sequence \
                 {sequence} is newer than slot {}'s, so falling back to that slot could lose \
                 acknowledged steps",
                1 - position
            ),
        }
    }
}

/// The state recovered from a file, and what became of the other slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub slot: Slot,
    /// Why the other slot was rejected, if it was. A torn last write looks exactly like this.
    pub other_slot_error: Option<SlotError>,
    /// By position, the offset of the first non-zero padding byte of a slot whose record was
    /// read all the same (its checksum holds). No crash writes there: the disk damaged it.
    pub padding_faults: [Option<usize>; 2],
}

/// The byte offset of the slot that holds `sequence`.
pub fn offset_of(sequence: u64) -> u64 {
    (sequence % 2) * SLOT_BYTES as u64
}

/// Serializes a slot into its on-disk bytes.
pub fn encode(slot: Slot) -> [u8; SLOT_BYTES] {
    let mut bytes = [0u8; SLOT_BYTES];
    bytes[0..8].copy_from_slice(&MAGIC);
    bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
    bytes[12..20].copy_from_slice(&slot.sequence.to_le_bytes());
    bytes[20..28].copy_from_slice(&u64::from(slot.cursor.index()).to_le_bytes());
    let checksum = crc32c(&bytes[..HEADER_BYTES]);
    bytes[HEADER_BYTES..CHECKSUM_END].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Parses and checks the slot found at `position` (0 or 1) of a file, padding included.
pub fn decode(bytes: &[u8; SLOT_BYTES], position: usize) -> Result<Slot, SlotError> {
    let slot = decode_record(bytes, position)?;
    match padding_fault(bytes) {
        Some(offset) => Err(SlotError::Padding { offset }),
        None => Ok(slot),
    }
}

/// Parses and checks the record of a slot: everything but its padding.
fn decode_record(bytes: &[u8; SLOT_BYTES], position: usize) -> Result<Slot, SlotError> {
    if bytes[0..8] != MAGIC {
        return Err(SlotError::Magic);
    }
    let stored = u32::from_le_bytes(bytes[HEADER_BYTES..CHECKSUM_END].try_into().unwrap());
    let computed = crc32c(&bytes[..HEADER_BYTES]);
    if stored != computed {
        return Err(SlotError::Checksum { stored, computed });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(SlotError::Version(version));
    }
    let sequence = sequence_of(bytes);
    let index = u64::from_le_bytes(bytes[20..28].try_into().unwrap());
    let cursor = Cursor::at(index).ok_or(SlotError::Index(index))?;
    if offset_of(sequence) != (position * SLOT_BYTES) as u64 {
        return Err(SlotError::Position { sequence, position });
    }
    if sequence == u64::MAX {
        return Err(SlotError::LastSequence);
    }
    Ok(Slot { sequence, cursor })
}

/// The sequence number a slot's header holds, valid or not.
fn sequence_of(bytes: &[u8; SLOT_BYTES]) -> u64 {
    u64::from_le_bytes(bytes[12..20].try_into().unwrap())
}

/// The offset of the first non-zero byte past the envelope, which version 1 keeps as zeros.
fn padding_fault(bytes: &[u8; SLOT_BYTES]) -> Option<usize> {
    bytes[CHECKSUM_END..]
        .iter()
        .position(|&b| b != 0)
        .map(|offset| CHECKSUM_END + offset)
}

/// Picks the newest valid slot of a whole file. A slot of another format version refuses the
/// file, whatever the other slot holds; so does a slot that was written whole yet is invalid,
/// if it is newer than the valid one (see the module's documentation).
pub fn recover(file: &[u8]) -> Result<Recovered, RecoverError> {
    if file.len() != FILE_BYTES {
        return Err(RecoverError::Length(file.len()));
    }
    let slot_bytes = |p: usize| -> &[u8; SLOT_BYTES] {
        file[p * SLOT_BYTES..(p + 1) * SLOT_BYTES]
            .try_into()
            .unwrap()
    };
    let records = [
        decode_record(slot_bytes(0), 0),
        decode_record(slot_bytes(1), 1),
    ];
    for (position, record) in records.iter().enumerate() {
        if let Err(SlotError::Version(version)) = *record {
            return Err(RecoverError::OtherVersion { position, version });
        }
    }
    let newest = (0..2)
        .filter_map(|p| records[p].as_ref().ok().map(|slot| (p, *slot)))
        .max_by_key(|(_, slot)| slot.sequence);
    let Some((position, slot)) = newest else {
        let [a, b] = records.map(|r| r.expect_err("no slot is valid"));
        return Err(RecoverError::NoValidSlot([a, b]));
    };
    let other = 1 - position;
    let other_slot_error = records[other].as_ref().err().cloned();
    if let Some(error) = &other_slot_error {
        let sequence = sequence_of(slot_bytes(other));
        if error.written_whole() && sequence > slot.sequence {
            return Err(RecoverError::Damaged {
                position: other,
                sequence,
                error: error.clone(),
            });
        }
    }
    let padding_faults = [0, 1].map(|p| {
        records[p]
            .as_ref()
            .ok()
            .and_then(|_| padding_fault(slot_bytes(p)))
    });
    // Positions force different parities, so the sequences of two valid slots are never equal.
    Ok(Recovered {
        slot,
        other_slot_error,
        padding_faults,
    })
}

/// The contents of a new state file: both slots valid, cursor at F(0), sequences 0 and 1.
pub fn initial_file() -> Vec<u8> {
    let mut file = Vec::with_capacity(FILE_BYTES);
    for sequence in 0..2 {
        file.extend_from_slice(&encode(Slot {
            sequence,
            cursor: Cursor::START,
        }));
    }
    file
}

/// CRC-32C (Castagnoli), bitwise over a compile-time table. It detects every error burst of
/// up to 32 bits, so any single corrupted byte of the header is caught.
fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(sequence: u64, index: u64) -> Slot {
        Slot {
            sequence,
            cursor: Cursor::at(index).unwrap(),
        }
    }

    fn file_with(a: Slot, b: Slot) -> Vec<u8> {
        let mut file = encode(a).to_vec();
        file.extend_from_slice(&encode(b));
        file
    }

    #[test]
    fn crc32c_matches_the_published_check_value() {
        // The standard check value of CRC-32C over the ASCII digits 1..9.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn round_trip() {
        for (sequence, index) in [(0, 0), (1, 186), (2, 93), (u64::MAX - 1, 7)] {
            let s = slot(sequence, index);
            let position = (sequence % 2) as usize;
            assert_eq!(decode(&encode(s), position), Ok(s));
        }
    }

    #[test]
    fn initial_file_recovers_to_index_zero() {
        let recovered = recover(&initial_file()).unwrap();
        assert_eq!(recovered.slot, slot(1, 0));
        assert_eq!(recovered.other_slot_error, None);
    }

    #[test]
    fn newest_valid_slot_wins() {
        assert_eq!(
            recover(&file_with(slot(4, 10), slot(3, 9))).unwrap().slot,
            slot(4, 10)
        );
        assert_eq!(
            recover(&file_with(slot(4, 10), slot(5, 11))).unwrap().slot,
            slot(5, 11)
        );
    }

    /// A slot as another format version would write it: the same envelope (magic, version,
    /// checksum of the first 28 bytes), anything in the rest.
    fn other_version(version: u32, slot: Slot, padding: u8) -> [u8; SLOT_BYTES] {
        let mut bytes = encode(slot);
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let checksum = crc32c(&bytes[..HEADER_BYTES]);
        bytes[HEADER_BYTES..CHECKSUM_END].copy_from_slice(&checksum.to_le_bytes());
        bytes[CHECKSUM_END] = padding;
        bytes
    }

    #[test]
    fn a_slot_of_another_format_version_is_rejected_even_with_a_valid_checksum() {
        let bytes = other_version(2, slot(6, 42), 0);
        assert_eq!(decode(&bytes, 0), Err(SlotError::Version(2)));
        // Whatever that version keeps past the envelope.
        let bytes = other_version(2, slot(6, 42), 0x5a);
        assert_eq!(decode(&bytes, 0), Err(SlotError::Version(2)));
    }

    #[test]
    fn a_file_with_a_slot_of_another_format_version_is_refused_not_recovered_from_the_other() {
        // A newer fibd committed once into slot 1 (its start-up commit, say); slot 0 is ours.
        // Serving slot 0 would write over slot 1 and lose what the newer fibd recorded.
        for (a, b, position) in [
            (encode(slot(10, 50)), other_version(2, slot(11, 51), 7), 1),
            (other_version(3, slot(12, 52), 0), encode(slot(11, 51)), 0),
            (
                other_version(2, slot(12, 52), 0),
                other_version(2, slot(13, 53), 0),
                0,
            ),
        ] {
            let mut file = a.to_vec();
            file.extend_from_slice(&b);
            let refused = recover(&file).unwrap_err();
            assert!(
                matches!(refused, RecoverError::OtherVersion { position: p, .. } if p == position),
                "{refused:?}"
            );
            assert!(refused.to_string().contains("unsupported format version"));
        }
        // A version field whose checksum fails is damage, as a torn write is: the other slot
        // is served.
        let mut torn = other_version(2, slot(11, 51), 0);
        torn[HEADER_BYTES] ^= 1;
        let mut file = encode(slot(10, 50)).to_vec();
        file.extend_from_slice(&torn);
        assert_eq!(recover(&file).unwrap().slot, slot(10, 50));
    }

    #[test]
    fn a_padding_fault_names_its_byte() {
        let mut bytes = encode(slot(6, 42));
        bytes[100] = 1;
        assert_eq!(decode(&bytes, 0), Err(SlotError::Padding { offset: 100 }));
    }

    /// A slot with this header, its checksum made to hold: what a tear can never produce.
    fn written_whole(sequence: u64, index: u64) -> [u8; SLOT_BYTES] {
        let mut bytes = encode(slot(0, 0));
        bytes[12..20].copy_from_slice(&sequence.to_le_bytes());
        bytes[20..28].copy_from_slice(&index.to_le_bytes());
        let checksum = crc32c(&bytes[..HEADER_BYTES]);
        bytes[HEADER_BYTES..CHECKSUM_END].copy_from_slice(&checksum.to_le_bytes());
        bytes
    }

    #[test]
    fn a_slot_written_whole_with_what_fibd_never_writes_is_refused_only_when_newer() {
        // (slot 0, slot 1, the damaged one's position, sequence and fault)
        for (first, second, position, sequence, error) in [
            (
                encode(slot(10, 40)),
                written_whole(11, 200),
                1,
                11,
                SlotError::Index(200),
            ),
            (
                written_whole(13, 41),
                encode(slot(9, 40)),
                0,
                13,
                SlotError::Position {
                    sequence: 13,
                    position: 0,
                },
            ),
            (
                encode(slot(10, 40)),
                written_whole(u64::MAX, 41),
                1,
                u64::MAX,
                SlotError::LastSequence,
            ),
        ] {
            let mut file = first.to_vec();
            file.extend_from_slice(&second);
            let refused = recover(&file).unwrap_err();
            assert_eq!(
                refused,
                RecoverError::Damaged {
                    position,
                    sequence,
                    error
                }
            );
            let text = refused.to_string();
            assert!(text.contains("not torn by a crash"), "{text}");
        }
        // Older than the valid slot: reported, and the valid slot served.
        let mut file = written_whole(8, 200).to_vec();
        file.extend_from_slice(&encode(slot(9, 40)));
        let recovered = recover(&file).unwrap();
        assert_eq!(recovered.slot, slot(9, 40));
        assert_eq!(recovered.other_slot_error, Some(SlotError::Index(200)));
    }

    #[test]
    fn a_slot_whose_padding_is_damaged_is_read_and_the_damage_reported() {
        for position in 0..2 {
            let mut file = file_with(slot(10, 40), slot(11, 41));
            file[position * SLOT_BYTES + 2000] = 0x10;
            let recovered = recover(&file).unwrap();
            // The newer record is intact, whichever slot's padding is damaged.
            assert_eq!(recovered.slot, slot(11, 41));
            assert_eq!(recovered.other_slot_error, None);
            let mut faults = [None; 2];
            faults[position] = Some(2000);
            assert_eq!(recovered.padding_faults, faults);
        }
        // The only valid record is read even so.
        let mut file = file_with(slot(10, 40), slot(11, 41));
        file[SLOT_BYTES + 20] ^= 1;
        file[100] = 0xff;
        let recovered = recover(&file).unwrap();
        assert_eq!(recovered.slot, slot(10, 40));
        assert_eq!(recovered.padding_faults, [Some(100), None]);
        assert!(matches!(
            recovered.other_slot_error,
            Some(SlotError::Checksum { .. })
        ));
    }

    #[test]
    fn a_slot_in_the_wrong_position_is_rejected() {
        assert_eq!(
            decode(&encode(slot(3, 1)), 0),
            Err(SlotError::Position {
                sequence: 3,
                position: 0
            })
        );
    }

    #[test]
    fn every_single_byte_corruption_of_a_slot_is_detected() {
        let good = encode(slot(6, 42));
        for offset in 0..SLOT_BYTES {
            // Every other value of the header bytes; a few distinct patterns for the padding,
            // where any non-zero byte is rejected the same way.
            let values: Vec<u8> = if offset < CHECKSUM_END {
                (0..=255u8).filter(|&v| v != good[offset]).collect()
            } else {
                vec![0x01, 0x80, 0xff]
            };
            for v in values {
                let mut bad = good;
                bad[offset] = v;
                assert!(
                    decode(&bad, 0).is_err(),
                    "corruption at offset {offset} to {v:#04x} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_of_the_file_is_refused() {
        let file = file_with(slot(6, 42), slot(7, 43));
        for len in 0..FILE_BYTES {
            assert_eq!(recover(&file[..len]), Err(RecoverError::Length(len)));
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(recover(&longer).is_err());
    }

    #[test]
    fn a_torn_write_of_the_older_slot_recovers_the_newer_one() {
        // Slot 0 holds sequence 6 (index 42); the write of sequence 8 (index 44) into slot 0
        // is cut after `prefix` bytes. Slot 1 holds the acknowledged sequence 7 (index 43).
        let old = encode(slot(6, 42));
        let new = encode(slot(8, 44));
        let acknowledged = slot(7, 43);
        for prefix in 0..=SLOT_BYTES {
            let mut torn = new[..prefix].to_vec();
            torn.extend_from_slice(&old[prefix..]);
            let mut file = torn;
            file.extend_from_slice(&encode(acknowledged));
            let recovered = recover(&file).unwrap().slot;
            // Either the write completed (prefix covers the header) or it did not count.
            let expected = if prefix >= CHECKSUM_END {
                slot(8, 44)
            } else {
                acknowledged
            };
            assert_eq!(recovered, expected, "prefix {prefix}");
        }
    }

    #[test]
    fn both_slots_invalid_is_refused_with_both_reasons() {
        let mut file = initial_file();
        file[0] ^= 0xff;
        file[SLOT_BYTES + 20] ^= 0x01;
        let err = recover(&file).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("slot 0: bad magic"), "{text}");
        assert!(text.contains("slot 1: checksum mismatch"), "{text}");
        assert!(recover(&vec![0u8; FILE_BYTES]).is_err());
    }

    /// A power cut at any point of any write, or damage of any kind to the file, either
    /// recovers a state that was really committed or is refused: never an index that was
    /// never committed, and a torn write never goes back past the last completed commit.
    /// Recovers `image` and checks the result is one of `allowed` (or a refusal), and not
    /// older than `at_least`.
    fn check(image: &[u8], allowed: &[(u64, u8)], what: &str, at_least: Option<(u64, u8)>) {
        if let Ok(r) = recover(image) {
            let got = (r.slot.sequence, r.slot.cursor.index());
            assert!(
                allowed.contains(&got),
                "{what}: recovered {got:?}, never committed"
            );
            if let Some(floor) = at_least {
                assert!(
                    got.0 >= floor.0,
                    "{what}: went back to {got:?} past {floor:?}"
                );
            }
        }
    }

    #[test]
    fn every_crash_or_damage_recovers_a_committed_state_or_refuses() {
        let mut file = initial_file();
        // (sequence, index) of every completed commit, the initial file's included.
        let mut committed: Vec<(u64, u8)> = vec![(0, 0), (1, 0)];
        let path = [1u8, 2, 3, 4, 3, 2, 1, 0, 1, 186, 185];
        for (n, &index) in path.iter().enumerate() {
            let sequence = n as u64 + 2;
            let last = *committed.last().unwrap();
            let new = encode(Slot {
                sequence,
                cursor: Cursor::at(index.into()).unwrap(),
            });
            let at = offset_of(sequence) as usize;
            // Torn write: any prefix of the new slot on top of the old one. The write in
            // progress may count as done once its header is whole.
            let mut in_progress = committed.clone();
            in_progress.push((sequence, index));
            for prefix in 0..=SLOT_BYTES {
                let mut image = file.clone();
                image[at..at + prefix].copy_from_slice(&new[..prefix]);
                let what = format!("commit {sequence} torn at {prefix}");
                check(&image, &in_progress, &what, Some(last));
                assert!(
                    recover(&image).is_ok(),
                    "a torn write must not make the file unusable"
                );
            }
            file[at..at + SLOT_BYTES].copy_from_slice(&new);
            committed.push((sequence, index));
            // Damage after the commit: either slot zeroed, every truncation, stray bytes.
            for zeroed in 0..2 {
                let mut image = file.clone();
                image[zeroed * SLOT_BYTES..(zeroed + 1) * SLOT_BYTES].fill(0);
                check(&image, &committed, &format!("slot {zeroed} zeroed"), None);
            }
            for len in 0..FILE_BYTES {
                check(
                    &file[..len],
                    &committed,
                    &format!("truncated to {len}"),
                    None,
                );
            }
            for offset in (0..FILE_BYTES).step_by(7) {
                let mut image = file.clone();
                image[offset] ^= 1 << (offset % 8);
                check(&image, &committed, &format!("bit flip at {offset}"), None);
            }
        }
    }
}
