//! Keyset pagination: `?limit=20&after=<last id of the previous page>`.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const DEFAULT_PAGE_LIMIT: u32 = 20;
pub const MAX_PAGE_LIMIT: u32 = 100;

/// The query string of a list endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageRequest {
    /// How many items to return, 1 to 100 (default 20).
    #[serde(default, deserialize_with = "limit", skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Return items after this id: the `next_after` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// A page size from a query string (text) or JSON (a number), within `1..=MAX_PAGE_LIMIT`.
fn limit<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    struct Limit;

    impl serde::de::Visitor<'_> for Limit {
        type Value = u32;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a whole number from 1 to {MAX_PAGE_LIMIT}")
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
            match u32::try_from(v) {
                Ok(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n),
                _ => Err(E::custom(format_args!("must be a whole number from 1 to {MAX_PAGE_LIMIT}"))),
            }
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
            self.visit_u64(u64::try_from(v).unwrap_or(0))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u32, E> {
            match v.trim().parse::<i64>() {
                Ok(n) => self.visit_i64(n),
                Err(_) => Err(E::custom(format_args!("must be a whole number from 1 to {MAX_PAGE_LIMIT}"))),
            }
        }
    }

    deserializer.deserialize_any(Limit).map(Some)
}

/// `after` is not an id of the listed kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`after` must be an id from a previous page.")]
pub struct InvalidCursor;

impl PageRequest {
    /// The cursor, checked to be an id of type `T` (the ids the list is ordered by): a page
    /// starts after it. Every list paginates by keyset on its UUIDv7 ids this way.
    pub fn after_id<T: std::str::FromStr>(&self) -> Result<Option<String>, InvalidCursor> {
        match &self.after {
            None => Ok(None),
            Some(after) if after.parse::<T>().is_ok() => Ok(Some(after.clone())),
            Some(_) => Err(InvalidCursor),
        }
    }

    /// The effective limit, clamped to `1..=MAX_PAGE_LIMIT`.
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_PAGE_LIMIT).clamp(1, MAX_PAGE_LIMIT)
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Whether another page follows.
    pub has_more: bool,
    /// Pass as `after` to fetch the next page; `null` on the last page.
    pub next_after: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows fetched in order: the extra row, if present,
    /// only tells that another page exists.
    pub fn from_overfetch(mut rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> Self {
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_after = if has_more { rows.last().map(&cursor_of) } else { None };
        Self { data: rows, has_more, next_after }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { data: self.data.into_iter().map(f).collect(), has_more: self.has_more, next_after: self.next_after }
    }

    /// Like [`Page::map`] with a conversion that can fail: the first error wins.
    pub fn try_map<U, E>(self, f: impl FnMut(T) -> Result<U, E>) -> Result<Page<U>, E> {
        let data = self.data.into_iter().map(f).collect::<Result<_, _>>()?;
        Ok(Page { data, has_more: self.has_more, next_after: self.next_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overfetch_sets_has_more_and_cursor() {
        let page = Page::from_overfetch(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(page.data, vec![1, 2]);
        assert!(page.has_more);
        assert_eq!(page.next_after.as_deref(), Some("2"));

        let last = Page::from_overfetch(vec![1, 2], 2, |n| n.to_string());
        assert!(!last.has_more);
        assert_eq!(last.next_after, None);
    }

    #[test]
    fn try_map_keeps_the_cursor_and_stops_at_the_first_error() {
        let page = Page::from_overfetch(vec![1, 2, 3], 2, |n| n.to_string());
        let doubled = page.clone().try_map(|n| Ok::<_, ()>(n * 2)).unwrap();
        assert_eq!(doubled.data, vec![2, 4]);
        assert_eq!(doubled.next_after.as_deref(), Some("2"));
        assert_eq!(page.try_map(|n| if n == 2 { Err(n) } else { Ok(n) }), Err(2));
    }

    #[test]
    fn limit_outside_the_range_is_refused_with_keels_words() {
        for bad in ["limit=-1", "limit=0", "limit=101", "limit=lots", "limit=1.5"] {
            let error = serde_urlencoded::from_str::<PageRequest>(bad).unwrap_err().to_string();
            assert_eq!(error, "must be a whole number from 1 to 100", "{bad}");
        }
        let page: PageRequest = serde_urlencoded::from_str("limit=100&after=x").unwrap();
        assert_eq!((page.limit, page.after.as_deref()), (Some(100), Some("x")));
        let page: PageRequest = serde_json::from_str(r#"{"limit": 5}"#).unwrap();
        assert_eq!(page.limit, Some(5));
        assert_eq!(serde_urlencoded::to_string(&page).unwrap(), "limit=5");
    }

    #[test]
    fn limit_is_clamped() {
        assert_eq!(PageRequest { limit: Some(0), after: None }.limit(), 1);
        assert_eq!(PageRequest { limit: Some(1000), after: None }.limit(), MAX_PAGE_LIMIT);
        assert_eq!(PageRequest::default().limit(), DEFAULT_PAGE_LIMIT);
    }
}
