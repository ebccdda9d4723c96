//! Every NATS subject, KV bucket, object store, stream and micro-service name
//! zerofoot uses, built from the cluster name. Nothing else in the code base
//! formats a subject: change a name here and every service follows.

use std::fmt;
use std::str::FromStr;

/// Micro-service name of the management service (`nats micro ls`).
pub const MANAGEMENT_SERVICE: &str = "zf-management";
/// Micro-service name of the module repository.
pub const REPOSITORY_SERVICE: &str = "zf-repository";
/// Micro-service name of an agent node.
pub const AGENT_NODE_SERVICE: &str = "zf-agent-node";
/// Queue group shared by agent nodes for `op.submit`: one node takes each request.
pub const AGENT_QUEUE_GROUP: &str = "zf-agent-nodes";
/// The zone of nodes and resources that name none.
pub const DEFAULT_ZONE: &str = "default";

/// Serde default of every `zone` field.
pub fn default_zone() -> String {
    DEFAULT_ZONE.to_string()
}

/// Checks a zone name: a single subject token, like an instance id.
pub fn validate_zone(zone: &str) -> Result<(), NameError> {
    validate_instance_id(zone)
}

/// A validated cluster name: `[a-z0-9-]{1,32}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterName(String);

/// Why a name was refused; the message says what is allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("cluster name {0:?} is invalid: use 1 to 32 characters from a-z, 0-9 and '-'")]
    Cluster(String),
    #[error("node id {0:?} is invalid: use 1 to 64 characters from A-Z, a-z, 0-9, '-' and '_'")]
    Node(String),
}

impl ClusterName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(NameError::Cluster(s.to_string()))
        }
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks an instance id (agent node or management) so that it is a single
/// subject token and a valid KV key part.
pub fn validate_instance_id(id: &str) -> Result<(), NameError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError::Node(id.to_string()))
    }
}

/// Builds the names of one cluster's NATS assets.
#[derive(Clone, Debug)]
pub struct Names {
    cluster: ClusterName,
}

impl Names {
    pub fn new(cluster: ClusterName) -> Self {
        Self { cluster }
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    fn prefix(&self) -> String {
        format!("zf.{}", self.cluster)
    }

    // --- JetStream assets -------------------------------------------------

    /// KV: execution context state table, key = operation id.
    pub fn contexts_bucket(&self) -> String {
        format!("zf_{}_contexts", self.cluster)
    }
    /// KV: lead claims, key [`LEAD_KEY`].
    pub fn lead_bucket(&self) -> String {
        format!("zf_{}_lead", self.cluster)
    }
    /// KV: managed resources, key = resource id.
    pub fn resources_bucket(&self) -> String {
        format!("zf_{}_resources", self.cluster)
    }
    /// KV: module index, key = [`module_index_key`].
    pub fn module_index_bucket(&self) -> String {
        format!("zf_{}_modules", self.cluster)
    }
    /// Object store: module bundles, object name = digest.
    pub fn module_objects(&self) -> String {
        format!("zf_{}_modules", self.cluster)
    }
    /// Object store: bundles uploaded through management, waiting for the
    /// repository to validate them. Objects expire on their own.
    pub fn upload_objects(&self) -> String {
        format!("zf_{}_uploads", self.cluster)
    }
    /// Stream: per-operation event logs.
    pub fn events_stream(&self) -> String {
        format!("ZF_{}_EVENTS", self.cluster.as_str().to_ascii_uppercase())
    }
    /// Stream: per-operation driver logs.
    pub fn logs_stream(&self) -> String {
        format!("ZF_{}_LOGS", self.cluster.as_str().to_ascii_uppercase())
    }

    /// Every stream behind the buckets, object stores and event logs above.
    pub fn all_streams(&self) -> Vec<String> {
        let mut streams: Vec<String> = [
            self.contexts_bucket(),
            self.lead_bucket(),
            self.resources_bucket(),
            self.module_index_bucket(),
        ]
        .iter()
        .map(|bucket| format!("KV_{bucket}"))
        .collect();
        streams.push(format!("OBJ_{}", self.module_objects()));
        streams.push(format!("OBJ_{}", self.upload_objects()));
        streams.push(self.events_stream());
        streams.push(self.logs_stream());
        streams
    }

    // --- subjects ----------------------------------------------------------

    /// Prefix of the reply subjects of one service role (`management`,
    /// `repository`, `agent`), so that NATS permissions can keep one
    /// cluster's replies from another's users.
    pub fn inbox_prefix(&self, role: &str) -> String {
        format!("_INBOX.{}.{role}", self.cluster)
    }
    pub fn inbox_subscription(&self, role: &str) -> String {
        format!("{}.>", self.inbox_prefix(role))
    }
    /// Every subject of every node (heartbeats, mirror endpoints).
    pub fn all_node_subjects(&self) -> String {
        format!("{}.node.>", self.prefix())
    }

    /// Every subject of one node (its heartbeat and endpoints).
    pub fn node_subjects(&self, node: &str) -> String {
        format!("{}.node.{node}.>", self.prefix())
    }

    pub fn heartbeat(&self, node: &str) -> String {
        format!("{}.node.{node}.heartbeat", self.prefix())
    }
    /// A node's endpoint answering with a summary of its redb mirror.
    pub fn node_mirror(&self, node: &str) -> String {
        format!("{}.node.{node}.mirror", self.prefix())
    }
    /// Where one node takes a sync operation on a resource it is the
    /// preferred node for (see `submit::preferred_node`).
    pub fn node_submit(&self, node: &str) -> String {
        format!("{}.node.{node}.submit", self.prefix())
    }
    pub fn all_node_submits(&self) -> String {
        format!("{}.node.*.submit", self.prefix())
    }
    pub fn all_heartbeats(&self) -> String {
        format!("{}.node.*.heartbeat", self.prefix())
    }
    /// Where sync operations of `zone` are handed to one node of that zone
    /// (the queue group of the zone's nodes).
    pub fn op_submit(&self, zone: &str) -> String {
        format!("{}.zone.{zone}.submit", self.prefix())
    }
    pub fn all_op_submits(&self) -> String {
        format!("{}.zone.*.submit", self.prefix())
    }
    pub fn op_cancel(&self, op_id: &str) -> String {
        format!("{}.op.{op_id}.cancel", self.prefix())
    }
    pub fn op_events(&self, op_id: &str) -> String {
        format!("{}.evt.{op_id}", self.prefix())
    }
    pub fn all_op_events(&self) -> String {
        format!("{}.evt.*", self.prefix())
    }
    /// One operation's driver log lines.
    pub fn op_logs(&self, op_id: &str) -> String {
        format!("{}.log.{op_id}", self.prefix())
    }
    pub fn all_op_logs(&self) -> String {
        format!("{}.log.*", self.prefix())
    }
    /// Prefix of one management instance's own endpoints.
    pub fn management_prefix(&self, mgmt_id: &str) -> String {
        format!("{}.mgmt.{mgmt_id}", self.prefix())
    }
    /// Every management instance's own endpoints.
    pub fn all_management_subjects(&self) -> String {
        format!("{}.mgmt.>", self.prefix())
    }
    /// Where nodes register with one management instance.
    pub fn management_register(&self, mgmt_id: &str) -> String {
        format!("{}.register", self.management_prefix(mgmt_id))
    }
    /// Prefix of the repository's endpoints (`put`, `get`, `list`).
    pub fn repository_prefix(&self) -> String {
        format!("{}.repo", self.prefix())
    }
    /// The repository's endpoints, announcements excluded.
    pub fn repository_endpoints(&self) -> String {
        format!("{}.*", self.repository_prefix())
    }
    pub fn repository_put(&self) -> String {
        format!("{}.put", self.repository_prefix())
    }
    pub fn repository_get(&self) -> String {
        format!("{}.get", self.repository_prefix())
    }
    pub fn repository_list(&self) -> String {
        format!("{}.list", self.repository_prefix())
    }
    /// Announcement of a newly stored module version.
    pub fn module_announce(&self, module: &str) -> String {
        format!("{}.announce.{module}", self.repository_prefix())
    }
}

/// The NATS account every zerofoot user belongs to. Only a named account
/// (not nats-server's default one) can import the system account's client
/// events, which tell the nodes at once that a lead's connection closed.
pub const NATS_ACCOUNT: &str = "ZEROFOOT";

/// The NATS system account of the generated configuration.
pub const NATS_SYSTEM_ACCOUNT: &str = "SYS";

/// The subject on which the system account announces that a client of
/// `account` disconnected.
pub fn account_disconnects(account: &str) -> String {
    format!("$SYS.ACCOUNT.{account}.DISCONNECT")
}

/// Where the nodes hear client disconnect notices: whichever account's are
/// imported into theirs (the generated configuration imports its own; a
/// server set up with JWTs may name the account by its key).
pub fn client_disconnects() -> String {
    account_disconnects("*")
}

/// Key of the default zone's lead claim in the lead bucket.
pub const LEAD_KEY: &str = "lead";

/// Key of `zone`'s lead claim: [`LEAD_KEY`] for the default zone (as before
/// zones), `lead.<zone>` for the others.
pub fn lead_key(zone: &str) -> String {
    if zone == DEFAULT_ZONE {
        LEAD_KEY.to_string()
    } else {
        format!("{LEAD_KEY}.{zone}")
    }
}

/// Key of one module version in the module index. KV keys may not hold `+`
/// (semver build metadata), so it is written as `_`, which semver never uses.
pub fn module_index_key(name: &str, version: &semver::Version) -> String {
    format!("{name}.{}", version.to_string().replace('+', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new("prod-1".parse().expect("valid cluster"))
    }

    #[test]
    fn cluster_names_follow_the_contract() {
        assert!("default".parse::<ClusterName>().is_ok());
        assert!("a-b-9".parse::<ClusterName>().is_ok());
        for bad in ["", "Prod", "a.b", "a b", "x".repeat(33).as_str(), "é"] {
            let err = bad.parse::<ClusterName>().expect_err(bad);
            assert!(err.to_string().contains("a-z, 0-9"), "{err}");
        }
    }

    #[test]
    fn every_name_carries_the_cluster() {
        let n = names();
        assert_eq!(n.contexts_bucket(), "zf_prod-1_contexts");
        assert_eq!(n.lead_bucket(), "zf_prod-1_lead");
        assert_eq!(n.resources_bucket(), "zf_prod-1_resources");
        assert_eq!(n.module_index_bucket(), "zf_prod-1_modules");
        assert_eq!(n.module_objects(), "zf_prod-1_modules");
        assert_eq!(n.events_stream(), "ZF_PROD-1_EVENTS");
        assert_eq!(n.heartbeat("node-a"), "zf.prod-1.node.node-a.heartbeat");
        assert_eq!(n.all_heartbeats(), "zf.prod-1.node.*.heartbeat");
        assert_eq!(n.op_submit("dc1"), "zf.prod-1.zone.dc1.submit");
        assert_eq!(n.node_submit("node-2"), "zf.prod-1.node.node-2.submit");
        assert_eq!(n.op_cancel("42"), "zf.prod-1.op.42.cancel");
        assert_eq!(n.op_events("42"), "zf.prod-1.evt.42");
        assert_eq!(n.management_prefix("m1"), "zf.prod-1.mgmt.m1");
        assert_eq!(n.repository_put(), "zf.prod-1.repo.put");
        assert_eq!(n.module_announce("shell"), "zf.prod-1.repo.announce.shell");
    }

    #[test]
    fn module_keys_are_valid_kv_keys() {
        let v: semver::Version = "1.2.0-rc.1+build.5".parse().expect("semver");
        assert_eq!(module_index_key("shell", &v), "shell.1.2.0-rc.1_build.5");
    }

    #[test]
    fn instance_ids_are_single_tokens() {
        assert!(validate_instance_id("node-A_1").is_ok());
        assert!(validate_instance_id("a.b").is_err());
        assert!(validate_instance_id("").is_err());
        assert!(validate_instance_id("a>").is_err());
    }
}
