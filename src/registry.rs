//! The running gateway's view of its configuration: models and providers with their load
//! balancers. Held behind an `ArcSwap` so a reload can replace it while requests in flight keep
//! the one they started with.

use crate::config::{EndpointUrl, ProviderSettings, Secret, Settings};
use crate::discovery::EndpointDiscovery;
use crate::providers::{AuthPlacement, ProviderKind};
use bytes::Bytes;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backends, LoadBalancer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often endpoint host names are resolved again.
pub const DNS_REFRESH: Duration = Duration::from_secs(60);

pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub credential: Secret,
    pub auth: AuthPlacement,
    pub api_version: Option<String>,
    pub anthropic_version: String,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub connect_timeout: Duration,
    pub upstreams: Arc<LoadBalancer<RoundRobin>>,
    /// Distinct endpoints, which bounds how many instances one request may try.
    pub endpoint_count: usize,
}

pub struct Model {
    pub name: String,
    pub upstream_model: String,
    /// `upstream_model` encoded as a JSON string, ready to splice into a body.
    pub upstream_model_json: Bytes,
    pub provider: Arc<Provider>,
    pub default_max_tokens: u32,
    pub timeout: Duration,
}

pub struct Registry {
    pub models: HashMap<String, Arc<Model>>,
    /// `GET /v1/models`, rendered once.
    pub model_list: Bytes,
    pub providers: Vec<Arc<Provider>>,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
}

impl Registry {
    /// Builds the registry. Load balancers start empty; [`Registry::resolve_all`] fills them.
    pub fn build(settings: &Settings) -> Registry {
        let providers: Vec<Arc<Provider>> = settings
            .providers
            .iter()
            .map(|p| Arc::new(build_provider(p)))
            .collect();
        let mut models = HashMap::new();
        let mut listed = Vec::new();
        for m in &settings.models {
            let Some(provider) = providers.iter().find(|p| p.name == m.provider) else {
                continue; // validation guarantees the provider exists
            };
            let upstream_model_json =
                Bytes::from(serde_json::Value::from(m.upstream_model.as_str()).to_string());
            listed.push(serde_json::json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": provider.name,
            }));
            models.insert(
                m.name.clone(),
                Arc::new(Model {
                    name: m.name.clone(),
                    upstream_model: m.upstream_model.clone(),
                    upstream_model_json,
                    provider: provider.clone(),
                    default_max_tokens: m.default_max_tokens,
                    timeout: m.timeout,
                }),
            );
        }
        let model_list = serde_json::json!({ "object": "list", "data": listed }).to_string();
        Registry {
            models,
            model_list: Bytes::from(model_list),
            providers,
            max_request_bytes: settings.max_request_bytes,
            max_response_bytes: settings.max_response_bytes,
        }
    }

    /// Resolves every provider's endpoints once (at start, before traffic).
    pub async fn resolve_all(&self) {
        for p in &self.providers {
            if let Err(e) = p.upstreams.update().await {
                log::warn!("provider {}: {e}", p.name);
            }
        }
    }
}

fn build_provider(p: &ProviderSettings) -> Provider {
    let endpoints: Vec<Arc<EndpointUrl>> = p.endpoints.iter().cloned().map(Arc::new).collect();
    let endpoint_count = endpoints.len();
    let backends = Backends::new(Box::new(EndpointDiscovery::new(endpoints)));
    let mut lb = LoadBalancer::from_backends(backends);
    lb.update_frequency = Some(DNS_REFRESH);
    Provider {
        name: p.name.clone(),
        kind: p.kind,
        credential: p.credential.clone(),
        auth: p.auth.clone(),
        api_version: p.api_version.clone(),
        anthropic_version: p.anthropic_version.clone(),
        headers: p.headers.clone(),
        connect_timeout: p.connect_timeout,
        upstreams: Arc::new(lb),
        endpoint_count,
    }
}
