//! Cache metrics, per named cache.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The in-process layer (`l1`) or the shared one (`l2`, Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheLayer {
    L1,
    L2,
}

impl CacheLayer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::L1 => "l1",
            Self::L2 => "l2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheResult {
    Hit,
    Miss,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabels {
    cache: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheRequestLabels {
    cache: String,
    layer: &'static str,
    result: &'static str,
}

/// `keel_cache_*`.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    requests: Family<CacheRequestLabels, Counter>,
    loads: Family<CacheLabels, Counter>,
    invalidations: Family<CacheLabels, Counter>,
}

impl CacheMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let requests = Family::default();
        let loads = Family::default();
        let invalidations = Family::default();
        registry.register("keel_cache_requests", "Cache lookups, by layer and result", requests.clone());
        registry.register("keel_cache_loads", "Values loaded from the source after a miss", loads.clone());
        registry.register("keel_cache_invalidations", "Keys or namespaces invalidated", invalidations.clone());
        Self { requests, loads, invalidations }
    }

    /// The handles of the cache called `name` (a fixed name such as `sessions`, never a key).
    pub fn cache(&self, name: &str) -> CacheHandle {
        let request = |layer: CacheLayer, result: CacheResult| {
            self.requests.get_or_create_owned(&CacheRequestLabels {
                cache: name.to_owned(),
                layer: layer.as_str(),
                result: result.as_str(),
            })
        };
        let labels = CacheLabels { cache: name.to_owned() };
        CacheHandle {
            requests: [
                request(CacheLayer::L1, CacheResult::Hit),
                request(CacheLayer::L1, CacheResult::Miss),
                request(CacheLayer::L2, CacheResult::Hit),
                request(CacheLayer::L2, CacheResult::Miss),
            ],
            loads: self.loads.get_or_create_owned(&labels),
            invalidations: self.invalidations.get_or_create_owned(&labels),
        }
    }
}

/// Records into one cache's series.
#[derive(Debug, Clone)]
pub struct CacheHandle {
    /// l1 hit, l1 miss, l2 hit, l2 miss.
    requests: [Counter; 4],
    loads: Counter,
    invalidations: Counter,
}

impl CacheHandle {
    pub fn request(&self, layer: CacheLayer, result: CacheResult) {
        self.requests[layer as usize * 2 + result as usize].inc();
    }

    pub fn load(&self) {
        self.loads.inc();
    }

    pub fn invalidation(&self) {
        self.invalidations.inc();
    }
}
