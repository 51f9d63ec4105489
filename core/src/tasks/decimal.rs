//! Exact decimal numbers for `sum`: 0.1 + 0.2 is 0.3, and integers far
//! beyond 64 bits stay exact.

use std::fmt;

use serde_json::Value;

/// `mantissa × 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

/// Most digits after the point a number may have.
const MAX_SCALE: u32 = 30;

impl Decimal {
    pub fn from_int(i: i64) -> Self {
        Self {
            mantissa: i.into(),
            scale: 0,
        }
    }

    /// Reads `-12.5`, `3`, `1e3`, `2.5E-2`: what JSON and people write.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (number, exponent) = match text.find(['e', 'E']) {
            Some(at) => (&text[..at], text[at + 1..].parse::<i32>().ok()?),
            None => (text, 0),
        };
        let (negative, digits) = match number.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, number.strip_prefix('+').unwrap_or(number)),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        if !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut mantissa: i128 = 0;
        for b in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(i128::from(b - b'0'))?;
        }
        let mut scale = i64::try_from(fraction.len()).ok()? - i64::from(exponent);
        while scale < 0 {
            mantissa = mantissa.checked_mul(10)?;
            scale += 1;
        }
        let mut d = Self {
            mantissa: if negative { -mantissa } else { mantissa },
            scale: u32::try_from(scale).ok()?,
        };
        d.normalize();
        (d.scale <= MAX_SCALE).then_some(d)
    }

    /// A JSON number: integers exactly, others through their shortest text.
    pub fn from_json(n: &serde_json::Number) -> Option<Self> {
        if let Some(i) = n.as_i64() {
            return Some(Self::from_int(i));
        }
        if let Some(u) = n.as_u64() {
            return Some(Self {
                mantissa: u.into(),
                scale: 0,
            });
        }
        Self::parse(&n.as_f64()?.to_string())
    }

    fn normalize(&mut self) {
        while self.scale > 0 && self.mantissa % 10 == 0 {
            self.mantissa /= 10;
            self.scale -= 1;
        }
    }

    /// The exact sum, or `None` when it does not fit.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        let scale = self.scale.max(other.scale);
        let lift = |d: Self| d.mantissa.checked_mul(10i128.checked_pow(scale - d.scale)?);
        let mut sum = Self {
            mantissa: lift(self)?.checked_add(lift(other)?)?,
            scale,
        };
        sum.normalize();
        Some(sum)
    }

    /// As JSON: a number when that is exact (up to 15 significant digits,
    /// which a double holds), otherwise the exact decimal as a string.
    pub fn to_json(self) -> Value {
        if self.scale == 0
            && let Ok(i) = i64::try_from(self.mantissa)
        {
            return Value::from(i);
        }
        let text = self.to_string();
        let significant = text.bytes().filter(u8::is_ascii_digit).count();
        if self.scale > 0
            && significant <= 15
            && let Ok(f) = text.parse::<f64>()
        {
            return Value::from(f);
        }
        Value::String(text)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (whole, fraction) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{whole}.{fraction}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(items: &[&str]) -> Value {
        items
            .iter()
            .map(|t| Decimal::parse(t).unwrap())
            .try_fold(Decimal::from_int(0), Decimal::checked_add)
            .unwrap()
            .to_json()
    }

    #[test]
    fn decimals_add_up_exactly() {
        assert_eq!(sum(&["0.1", "0.2"]), serde_json::json!(0.3));
        assert_eq!(sum(&["1.5", "2"]), serde_json::json!(3.5));
        assert_eq!(sum(&["-0.25", "0.05"]), serde_json::json!(-0.2));
        assert_eq!(sum(&["1e3", "2.5E-1"]), serde_json::json!(1000.25));
    }

    #[test]
    fn big_integers_stay_exact_as_strings() {
        assert_eq!(
            sum(&["9223372036854775807", "9223372036854775807"]),
            serde_json::json!("18446744073709551614")
        );
        assert_eq!(
            sum(&["123456789012345678901234567890", "1"]),
            serde_json::json!("123456789012345678901234567891")
        );
    }

    #[test]
    fn only_numbers_parse() {
        for bad in ["", "-", ".", "1.2.3", "abc", "1e", "0x10", "1,5"] {
            assert!(Decimal::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(Decimal::parse("+.5").unwrap().to_string(), "0.5");
        assert_eq!(Decimal::parse("-007.50").unwrap().to_string(), "-7.5");
    }
}
