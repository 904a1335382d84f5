//! Reading what an earlier or later release saved (checkpoints, changelog records): a list whose
//! items this release cannot read keeps the items it can, so one unreadable model never costs
//! the whole record.

use serde::{Deserialize, Deserializer};

/// The items of a saved list that this release can read; the others are left out (they start
/// afresh). Use with `#[serde(deserialize_with = "crate::saved::of_this_release")]`.
pub fn of_this_release<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written<T> {
        Now(T),
        Other(serde::de::IgnoredAny),
    }
    let all = Vec::<Written<T>>::deserialize(d)?;
    Ok(all
        .into_iter()
        .filter_map(|w| match w {
            Written::Now(t) => Some(t),
            Written::Other(_) => None,
        })
        .collect())
}
