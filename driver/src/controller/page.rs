//! Pagination of ListVolumes and ListSnapshots.
//!
//! A page ends at an ID, and the next page starts after it, so pages stay correct when entries
//! come and go between calls. The token is `<listing>:<last ID>:<check>`, where the check is
//! derived from the listing and the ID: a string the driver did not hand out for that listing
//! (csi-sanity's `invalid-token`, a bare volume ID, another listing's token, an edited token)
//! is refused with Aborted instead of being read as a position.

use tonic::Status;
use uuid::Uuid;

use crate::ids::{parse_snapshot_id, parse_volume_id};

/// Which listing a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Volumes,
    Snapshots,
}

/// Namespace of the token checks (a fixed random UUID: checks are stable across restarts).
const TOKEN_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2d4e_9a7b_4c1d_8e3f_5a6b_7c8d_9e0f);

impl Listing {
    fn name(self) -> &'static str {
        match self {
            Listing::Volumes => "volumes",
            Listing::Snapshots => "snapshots",
        }
    }

    fn rpc(self) -> &'static str {
        match self {
            Listing::Volumes => "ListVolumes",
            Listing::Snapshots => "ListSnapshots",
        }
    }

    fn is_id(self, id: &str) -> bool {
        match self {
            Listing::Volumes => parse_volume_id(id).is_some(),
            Listing::Snapshots => parse_snapshot_id(id).is_some(),
        }
    }

    fn check(self, last_id: &str) -> String {
        let digest = Uuid::new_v5(
            &TOKEN_NAMESPACE,
            format!("{}:{last_id}", self.name()).as_bytes(),
        );
        digest.simple().to_string()[..12].to_string()
    }

    /// The token for a page that ended at `last_id`.
    pub fn token_after(self, last_id: &str) -> String {
        format!("{}:{last_id}:{}", self.name(), self.check(last_id))
    }

    /// The ID a token made by `token_after` of this listing ends at, or None.
    fn position(self, token: &str) -> Option<&str> {
        let rest = token.strip_prefix(self.name())?.strip_prefix(':')?;
        let (id, check) = rest.rsplit_once(':')?;
        (self.is_id(id) && check == self.check(id)).then_some(id)
    }
}

/// A checked list request: at most `max_entries` (0: all), after `after` (None: from the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<'a> {
    listing: Listing,
    max_entries: usize,
    after: Option<&'a str>,
}

impl<'a> Page<'a> {
    /// Checks a list request before anything is asked of the RDS.
    pub fn parse(
        listing: Listing,
        max_entries: i32,
        starting_token: &'a str,
    ) -> Result<Self, Status> {
        let max_entries = usize::try_from(max_entries)
            .map_err(|_| Status::invalid_argument("max_entries must not be negative"))?;
        let after = if starting_token.is_empty() {
            None
        } else {
            Some(listing.position(starting_token).ok_or_else(|| {
                Status::aborted(format!(
                    "starting_token `{starting_token}` was not returned by {} of this driver; \
                     start again with an empty token",
                    listing.rpc()
                ))
            })?)
        };
        Ok(Self {
            listing,
            max_entries,
            after,
        })
    }

    /// This page of `items` (ID, entry), sorted by ID, and the token of the next page (empty on
    /// the last page).
    pub fn of<T>(&self, mut items: Vec<(String, T)>) -> (Vec<T>, String) {
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let start = self.after.map_or(0, |after| {
            items.partition_point(|(id, _)| id.as_str() <= after)
        });
        let mut rest: Vec<(String, T)> = items.into_iter().skip(start).collect();
        let mut next = String::new();
        if self.max_entries > 0 && rest.len() > self.max_entries {
            rest.truncate(self.max_entries);
            if let Some((id, _)) = rest.last() {
                next = self.listing.token_after(id);
            }
        }
        (rest.into_iter().map(|(_, v)| v).collect(), next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(ids: &[&str]) -> Vec<(String, String)> {
        ids.iter().map(|s| (s.to_string(), s.to_string())).collect()
    }

    #[test]
    fn pages_follow_the_last_id() {
        let all = items(&["pvc-c", "pvc-a", "pvc-b", "pvc-d"]);
        let first = Page::parse(Listing::Volumes, 2, "").unwrap();
        let (entries, next) = first.of(all.clone());
        assert_eq!(entries, ["pvc-a", "pvc-b"]);
        assert_eq!(next, Listing::Volumes.token_after("pvc-b"));
        let second = Page::parse(Listing::Volumes, 2, &next).unwrap();
        assert_eq!(
            second.of(all.clone()),
            (vec!["pvc-c".into(), "pvc-d".into()], String::new())
        );
        assert_eq!(
            Page::parse(Listing::Volumes, 0, "")
                .unwrap()
                .of(all)
                .0
                .len(),
            4
        );
    }

    #[test]
    fn only_tokens_of_the_same_listing_are_accepted() {
        let volume_token = Listing::Volumes.token_after("pvc-a");
        let snapshot_token = Listing::Snapshots.token_after("snap-a");
        assert!(Page::parse(Listing::Volumes, 1, &volume_token).is_ok());
        assert!(Page::parse(Listing::Snapshots, 1, &snapshot_token).is_ok());
        for (listing, token) in [
            (Listing::Volumes, "invalid-token"),
            (Listing::Volumes, "pvc-a"),
            (Listing::Volumes, snapshot_token.as_str()),
            (Listing::Snapshots, volume_token.as_str()),
            (Listing::Volumes, "volumes:pvc-a:000000000000"),
            (Listing::Volumes, "volumes:snap-a:"),
            (Listing::Snapshots, "snapshots:pvc-a"),
        ] {
            let e = Page::parse(listing, 1, token).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Aborted, "{token}");
            assert!(e.message().contains("starting_token"), "{}", e.message());
        }
        let e = Page::parse(Listing::Volumes, -1, "").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("max_entries"));
    }
}
