//! The Fibonacci table: every F(n) that fits in a `u128`, computed at compile time,
//! together with its decimal spelling so the hot path never formats a number.

/// The largest index whose Fibonacci number fits in a `u128`; F(187) overflows.
pub const INDEX_MAX: u8 = 186;

/// Number of entries in the table, F(0) through F(INDEX_MAX).
pub const TABLE_LEN: usize = INDEX_MAX as usize + 1;

/// Decimal digits of the largest entry (F(186) has 39 digits), the widest string we spell.
const DIGITS_MAX: usize = 39;

/// F(0)..=F(186). Built by a `const fn`, so an overflow would be a compile error,
/// not a wrong number at run time.
pub static TABLE: [u128; TABLE_LEN] = build_table();

/// The decimal spelling of every table entry, built at compile time as well.
static DECIMAL: [Decimal; TABLE_LEN] = build_decimal(&TABLE);

const fn build_table() -> [u128; TABLE_LEN] {
    let mut table = [0u128; TABLE_LEN];
    table[1] = 1;
    let mut n = 2;
    while n < TABLE_LEN {
        table[n] = table[n - 1] + table[n - 2];
        n += 1;
    }
    table
}

#[derive(Clone, Copy)]
struct Decimal {
    digits: [u8; DIGITS_MAX],
    len: u8,
}

const fn spell(mut value: u128) -> Decimal {
    let mut reversed = [0u8; DIGITS_MAX];
    let mut len = 0;
    loop {
        reversed[len] = b'0' + (value % 10) as u8;
        len += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    let mut digits = [0u8; DIGITS_MAX];
    let mut i = 0;
    while i < len {
        digits[i] = reversed[len - 1 - i];
        i += 1;
    }
    Decimal {
        digits,
        len: len as u8,
    }
}

const fn build_decimal(table: &[u128; TABLE_LEN]) -> [Decimal; TABLE_LEN] {
    let mut out = [Decimal {
        digits: [0; DIGITS_MAX],
        len: 0,
    }; TABLE_LEN];
    let mut n = 0;
    while n < TABLE_LEN {
        out[n] = spell(table[n]);
        n += 1;
    }
    out
}

/// F(n), or `None` when F(n) does not fit in a `u128` (n > 186).
pub fn value(n: u64) -> Option<u128> {
    usize::try_from(n).ok().and_then(|n| TABLE.get(n)).copied()
}

/// The decimal spelling of F(n) (ASCII digits, no newline), or `None` past the table.
pub fn decimal(n: u64) -> Option<&'static str> {
    let entry = DECIMAL.get(usize::try_from(n).ok()?)?;
    let bytes = &entry.digits[..entry.len as usize];
    // The table holds only ASCII digits written by `spell`, so this never fails.
    Some(std::str::from_utf8(bytes).expect("decimal table holds ASCII digits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let known: [(u64, u128); 8] = [
            (0, 0),
            (1, 1),
            (2, 1),
            (3, 2),
            (10, 55),
            (50, 12_586_269_025),
            (93, 12_200_160_415_121_876_738),
            (186, 332_825_110_087_067_562_321_196_029_789_634_457_848),
        ];
        for (n, expected) in known {
            assert_eq!(value(n), Some(expected), "F({n})");
        }
    }

    #[test]
    fn recurrence_holds_for_every_entry() {
        assert_eq!((TABLE[0], TABLE[1]), (0, 1));
        for n in 2..TABLE_LEN {
            assert_eq!(TABLE[n], TABLE[n - 1] + TABLE[n - 2], "F({n})");
        }
    }

    #[test]
    fn the_next_entry_overflows_u128() {
        let last = TABLE[INDEX_MAX as usize];
        let before = TABLE[INDEX_MAX as usize - 1];
        assert_eq!(last.checked_add(before), None, "F(187) must overflow u128");
        assert_eq!(value(187), None);
        assert_eq!(value(u64::MAX), None);
        assert_eq!(decimal(187), None);
    }

    #[test]
    fn decimal_spelling_matches_the_numbers() {
        for n in 0..TABLE_LEN as u64 {
            assert_eq!(decimal(n).unwrap(), value(n).unwrap().to_string(), "F({n})");
        }
    }
}
