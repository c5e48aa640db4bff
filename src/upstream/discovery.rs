//! Upstream instances for the load balancer: each endpoint's host name resolved to addresses by
//! Pingora's background service, never on the request path.

use crate::config::InstanceUrl;
use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_error::{Error, ErrorType, Result};
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Resolves a provider's endpoints. Each resolved address becomes a [`Backend`] carrying its
/// endpoint (scheme, Host, base path) in `ext`.
pub struct EndpointDiscovery {
    endpoints: Vec<Arc<InstanceUrl>>,
}

impl EndpointDiscovery {
    pub fn new(endpoints: Vec<Arc<InstanceUrl>>) -> Self {
        EndpointDiscovery { endpoints }
    }
}

#[async_trait]
impl ServiceDiscovery for EndpointDiscovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut backends = BTreeSet::new();
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
                Ok(addrs) => {
                    // One address per family is enough: the OS resolver already orders them.
                    for addr in addrs.take(1) {
                        let mut backend = Backend {
                            addr: SocketAddr::Inet(addr),
                            weight: endpoint.weight,
                            ext: Default::default(),
                        };
                        backend.ext.insert(endpoint.clone());
                        backends.insert(backend);
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", endpoint.host)),
            }
        }
        if backends.is_empty() && !failures.is_empty() {
            // Keep the previous set rather than replacing it with nothing.
            return Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!("cannot resolve {}", failures.join(", ")),
            );
        }
        for failure in failures {
            log::warn!("cannot resolve upstream {failure}");
        }
        Ok((backends, HashMap::new()))
    }
}
