//! The domain's metrics are the `keel_inference_*` families of the platform registry
//! (`shared::metrics::InferenceMetrics`), one handle per model and deployment.

pub(crate) use shared::metrics::{InferenceHandle as DeploymentMetrics, InferenceMetrics};
