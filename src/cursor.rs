//! The cursor state machine: an index into the Fibonacci table that steps forward and back
//! within its bounds. Pure: no I/O, no threads; the state owner decides when a step is durable.

use crate::fib;

/// Which way a step moves the cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Next,
    Previous,
}

/// A step that would leave the table. The cursor is unchanged when this is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// `next` at F(186): F(187) does not fit in 128 bits.
    AtEnd,
    /// `previous` at F(0): there is no F(-1).
    AtStart,
}

/// A position in the Fibonacci table, always within `0..=fib::INDEX_MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    index: u8,
}

impl Cursor {
    /// The cursor of a new state file.
    pub const START: Cursor = Cursor { index: 0 };

    /// A cursor at `index`, or `None` if the index is past the table.
    pub fn at(index: u64) -> Option<Cursor> {
        match u8::try_from(index) {
            Ok(index) if index <= fib::INDEX_MAX => Some(Cursor { index }),
            _ => None,
        }
    }

    pub fn index(self) -> u8 {
        self.index
    }

    /// Moves one step and returns the new index, or reports the bound and stays put.
    pub fn step(&mut self, step: Step) -> Result<u8, Bound> {
        self.index = match step {
            Step::Next if self.index == fib::INDEX_MAX => return Err(Bound::AtEnd),
            Step::Next => self.index + 1,
            Step::Previous if self.index == 0 => return Err(Bound::AtStart),
            Step::Previous => self.index - 1,
        };
        Ok(self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_sequence() {
        let mut cursor = Cursor::START;
        let mut values = vec![fib::value(cursor.index().into()).unwrap()];
        for step in [Step::Next, Step::Next, Step::Next, Step::Previous] {
            let index = cursor.step(step).unwrap();
            values.push(fib::value(index.into()).unwrap());
        }
        assert_eq!(values, [0, 1, 1, 2, 1]);
    }

    #[test]
    fn bounds_leave_the_cursor_unchanged() {
        let mut cursor = Cursor::START;
        assert_eq!(cursor.step(Step::Previous), Err(Bound::AtStart));
        assert_eq!(cursor, Cursor::START);

        let mut cursor = Cursor::at(fib::INDEX_MAX.into()).unwrap();
        assert_eq!(cursor.step(Step::Next), Err(Bound::AtEnd));
        assert_eq!(cursor.index(), fib::INDEX_MAX);
        assert_eq!(cursor.step(Step::Previous), Ok(fib::INDEX_MAX - 1));
    }

    #[test]
    fn walks_the_whole_table_and_back() {
        let mut cursor = Cursor::START;
        for expected in 1..=fib::INDEX_MAX {
            assert_eq!(cursor.step(Step::Next), Ok(expected));
        }
        for expected in (0..fib::INDEX_MAX).rev() {
            assert_eq!(cursor.step(Step::Previous), Ok(expected));
        }
    }

    #[test]
    fn at_rejects_indices_past_the_table() {
        assert_eq!(Cursor::at(186).map(Cursor::index), Some(186));
        assert_eq!(Cursor::at(187), None);
        assert_eq!(Cursor::at(u64::MAX), None);
    }
}
