//! The domains a gateway can serve.

/// A domain whose routes a gateway can serve (`gateway serve --only auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Domain {
    /// Accounts, sessions, organizations, API keys.
    Auth,
}

impl Domain {
    /// Every domain, in the order their routes are mounted.
    pub const ALL: &'static [Domain] = &[Domain::Auth];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => auth::DOMAIN,
        }
    }

    /// The domains to serve: `only` when given and non-empty, otherwise all of them.
    /// Sorted and without duplicates.
    pub fn select(only: Option<Vec<Domain>>) -> Vec<Domain> {
        let mut domains = match only {
            Some(only) if !only.is_empty() => only,
            _ => Self::ALL.to_vec(),
        };
        domains.sort();
        domains.dedup();
        domains
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Domain {
    type Err = UnknownDomain;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().copied().find(|d| d.as_str() == s).ok_or_else(|| UnknownDomain(s.to_owned()))
    }
}

/// A domain name that no domain has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown domain {0:?}; known domains: {known}", known = known_names())]
pub struct UnknownDomain(pub String);

fn known_names() -> String {
    Domain::ALL.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for domain in Domain::ALL {
            assert_eq!(domain.as_str().parse::<Domain>(), Ok(*domain));
            assert_eq!(<Domain as clap::ValueEnum>::to_possible_value(domain).unwrap().get_name(), domain.as_str());
        }
        assert_eq!("billing".parse::<Domain>(), Err(UnknownDomain("billing".into())));
    }

    #[test]
    fn select_defaults_to_every_domain_and_dedups() {
        assert_eq!(Domain::select(None), Domain::ALL);
        assert_eq!(Domain::select(Some(vec![])), Domain::ALL);
        assert_eq!(Domain::select(Some(vec![Domain::Auth, Domain::Auth])), vec![Domain::Auth]);
    }
}
