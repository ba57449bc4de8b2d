//! Kubernetes quantities compared by value: the API server stores `1024Mi` as `1Gi` and
//! `0.5` as `500m`, so comparing the strings would see drift that is not there.

/// Nano-units per unit: quantities are compared as whole nano-units.
const NANO: i128 = 1_000_000_000;

/// The value of a quantity in nano-units (`"500m"` → 500,000,000), or `None` if `text` is
/// not a quantity.
pub fn nano_units(text: &str) -> Option<i128> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (negative, number) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.chars().chain(fraction.chars()).all(|c| c.is_ascii_digit())
        || fraction.len() > 9
    {
        return None;
    }
    let whole: i128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let fraction: i128 = format!("{fraction:0<9}").parse().ok()?;
    let base = whole.checked_mul(NANO)?.checked_add(fraction)?;
    let value = match suffix {
        "" => base,
        "n" => base / NANO,
        "u" => base / 1_000_000,
        "m" => base / 1_000,
        "k" => base.checked_mul(1_000)?,
        "M" => base.checked_mul(1_000_000)?,
        "G" => base.checked_mul(1_000_000_000)?,
        "T" => base.checked_mul(1_000_000_000_000)?,
        "P" => base.checked_mul(1_000_000_000_000_000)?,
        "E" => base.checked_mul(1_000_000_000_000_000_000)?,
        "Ki" => base.checked_mul(1 << 10)?,
        "Mi" => base.checked_mul(1 << 20)?,
        "Gi" => base.checked_mul(1 << 30)?,
        "Ti" => base.checked_mul(1 << 40)?,
        "Pi" => base.checked_mul(1 << 50)?,
        "Ei" => base.checked_mul(1 << 60)?,
        exponent => {
            let power: u32 = exponent.strip_prefix(['e', 'E'])?.parse().ok()?;
            base.checked_mul(10_i128.checked_pow(power)?)?
        }
    };
    Some(if negative { -value } else { value })
}

/// True when both are quantities of the same value.
pub fn same(a: &str, b: &str) -> bool {
    a == b || matches!((nano_units(a), nano_units(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_servers_canonical_forms_are_the_same_quantity() {
        for (written, stored) in
            [("1024Mi", "1Gi"), ("0.5", "500m"), ("1000m", "1"), ("1e3", "1k"), ("2048Ki", "2Mi"), ("1.5Gi", "1536Mi")]
        {
            assert!(same(written, stored), "{written} = {stored}");
        }
        assert!(!same("1Gi", "1G"), "binary and decimal differ");
        assert!(!same("500m", "5"));
    }

    #[test]
    fn non_quantities_are_not_parsed() {
        for text in ["", "abc", "1.2.3", "1Xi", "--1", "."] {
            assert_eq!(nano_units(text), None, "{text:?}");
        }
        assert_eq!(nano_units("250m"), Some(250_000_000));
        assert_eq!(nano_units("-1"), Some(-NANO));
    }
}
