//! Range checks shared by every config section's `validate`: each error names its dotted key
//! (`train.lr: must be > 0 (got -1)`).

use crate::error::{Error, Result};

/// A finite value above 0.
pub(crate) fn positive(key: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::value(key, format!("must be > 0 (got {v})")))
    }
}

/// A finite value at or above 0.
pub(crate) fn non_negative(key: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::value(key, format!("must be >= 0 (got {v})")))
    }
}

pub(crate) fn at_least_one(key: &str, v: usize) -> Result<()> {
    if v >= 1 {
        Ok(())
    } else {
        Err(Error::value(key, format!("must be at least 1 (got {v})")))
    }
}

/// `v` (at `key`) must not exceed the value of the key `bound_key`.
pub(crate) fn at_most(key: &str, v: usize, bound_key: &str, bound: usize) -> Result<()> {
    if v <= bound {
        Ok(())
    } else {
        Err(Error::value(
            key,
            format!("must be <= {bound_key} = {bound} (got {v})"),
        ))
    }
}

/// In [0, 1): smoothing factors, betas.
pub(crate) fn unit_open(key: &str, v: f64) -> Result<()> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::value(key, format!("must be in [0, 1) (got {v})")))
    }
}

/// In (0, 1]: blends, trust regions.
pub(crate) fn unit_closed_above(key: &str, v: f64) -> Result<()> {
    if v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err(Error::value(key, format!("must be in (0, 1] (got {v})")))
    }
}

/// A source's or target set's name: letters, digits, '_' and '-', and not a reserved word
/// (names become JSON keys and CSV columns beside "step").
pub(crate) fn check_name(key: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::value(
            key,
            format!("must be non-empty and use only letters, digits, '_' and '-' (got {name:?})"),
        ));
    }
    if name == "all" || name == "step" {
        return Err(Error::value(key, format!("{name:?} is reserved")));
    }
    Ok(())
}
