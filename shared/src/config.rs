//! Command-line flags every binary shares (SPEC §10), flattened into each
//! service's own `clap` parser. Every flag has an environment fallback.

use clap::Args;

use crate::names::{ClusterName, Names};

/// Where NATS is and which cluster this process belongs to.
#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "ZF_NATS_URL", default_value = "nats://127.0.0.1:4222", value_parser = parse_servers)]
    pub nats_url: String,

    /// Cluster name: every subject and JetStream asset carries it.
    #[arg(long, env = "ZF_CLUSTER", default_value = "default", value_parser = parse_cluster)]
    pub cluster: ClusterName,

    /// Replicas of every bucket and stream this process creates (3 on a
    /// three-node NATS cluster in production).
    #[arg(long, env = "ZF_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// Seconds an operation's events are kept in the events stream.
    #[arg(long, env = "ZF_EVENTS_MAX_AGE_S", default_value_t = 7 * 24 * 3600)]
    pub events_max_age_s: u64,

    /// Bytes the events stream may hold before its oldest events are dropped (0: no limit).
    #[arg(long, env = "ZF_EVENTS_MAX_BYTES", default_value_t = 0)]
    pub events_max_bytes: u64,
}

impl NatsArgs {
    pub fn names(&self) -> Names {
        Names::new(self.cluster.clone())
    }

    /// The settings this process creates JetStream assets with.
    pub fn asset_settings(&self) -> crate::assets::AssetSettings {
        crate::assets::AssetSettings {
            replicas: self.replicas,
            events_max_age: std::time::Duration::from_secs(self.events_max_age_s),
            events_max_bytes: self.events_max_bytes,
        }
    }
}

fn parse_cluster(s: &str) -> Result<ClusterName, String> {
    s.parse()
        .map_err(|e: crate::names::NameError| e.to_string())
}

fn parse_servers(s: &str) -> Result<String, String> {
    let servers: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if servers.is_empty() {
        return Err("give at least one NATS server URL, e.g. nats://127.0.0.1:4222".into());
    }
    for server in servers {
        server.parse::<async_nats::ServerAddr>().map_err(|e| {
            format!("{server:?} is not a NATS server URL ({e}); e.g. nats://host:4222")
        })?;
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_are_checked() {
        assert!(parse_servers("nats://a:4222, nats://b:4222").is_ok());
        assert!(parse_servers("nats://a:4222,,").is_ok());
        assert!(parse_servers("").is_err());
        assert!(parse_servers("nats://a:notaport").is_err());
    }
}
