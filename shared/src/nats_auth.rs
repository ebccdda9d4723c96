//! NATS users for a zerofoot cluster: which subjects each service role may
//! publish and subscribe to, and the nats-server `accounts` block that
//! grants exactly that (`zf-management nats-auth` writes it).
//!
//! Every permission is built from [`Names`], so a renamed subject or bucket
//! changes the grants with it. The JetStream API subjects (`$JS.API...`,
//! `$KV...`, `$O...`) are NATS's own wire names for the operations the
//! services use on their buckets and streams.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::names::{account_disconnects, ClusterName, Names, NATS_ACCOUNT, NATS_SYSTEM_ACCOUNT};

/// The service a NATS user stands for. Each has its own user per cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceRole {
    Management,
    Repository,
    Agent,
}

impl ServiceRole {
    pub const ALL: [ServiceRole; 3] = [
        ServiceRole::Management,
        ServiceRole::Repository,
        ServiceRole::Agent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceRole::Management => "management",
            ServiceRole::Repository => "repository",
            ServiceRole::Agent => "agent",
        }
    }
}

/// Name of the user with every permission, for operators and the NATS CLI.
pub const ADMIN_USER: &str = "admin";

/// Name of the system account's user, for operators' server reports.
pub const SYSTEM_USER: &str = "system";

/// The NATS user name of `role` in `cluster`.
pub fn user_name(cluster: &ClusterName, role: ServiceRole) -> String {
    format!("zf-{cluster}-{}", role.as_str())
}

/// The NATS user of agent node `node` in `cluster`, when nodes have users
/// of their own (`zf-management nats-auth --nodes`).
pub fn node_user_name(cluster: &ClusterName, node: &str) -> String {
    format!("zf-{cluster}-node-{node}")
}

/// What one user may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl Permissions {
    /// Open a stream as [`crate::assets::Assets::open`] does: look it up,
    /// and create it if this service starts first (an existing stream's
    /// settings cannot be changed this way).
    fn open_stream(&mut self, stream: &str) {
        self.publish.push(format!("$JS.API.STREAM.INFO.{stream}"));
        self.publish.push(format!("$JS.API.STREAM.CREATE.{stream}"));
    }

    /// Read a stream: single-message gets, and ordered consumers (KV
    /// watches, object reads, event log reads) with their acks and flow control.
    fn read_stream(&mut self, stream: &str) {
        for api in [
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}.>"),
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
            format!("$JS.API.CONSUMER.INFO.{stream}.>"),
            format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
            format!("$JS.ACK.{stream}.>"),
            format!("$JS.FC.{stream}.>"),
        ] {
            self.publish.push(api);
        }
    }

    fn read_kv(&mut self, bucket: &str) {
        self.read_stream(&format!("KV_{bucket}"));
    }

    fn write_kv(&mut self, bucket: &str) {
        self.read_kv(bucket);
        self.publish.push(format!("$KV.{bucket}.>"));
    }

    fn read_objects(&mut self, bucket: &str) {
        self.read_stream(&format!("OBJ_{bucket}"));
    }

    /// Put and delete objects: chunks and metadata, and the purge of a
    /// replaced or deleted object's chunks.
    fn write_objects(&mut self, bucket: &str) {
        self.read_objects(bucket);
        self.publish.push(format!("$O.{bucket}.>"));
        self.publish
            .push(format!("$JS.API.STREAM.PURGE.OBJ_{bucket}"));
    }

    /// Answer `$SRV` discovery (`nats micro ls`) as micro service `service`.
    fn serve_micro(&mut self, service: &str) {
        for verb in ["PING", "INFO", "STATS"] {
            self.subscribe.push(format!("$SRV.{verb}"));
            self.subscribe.push(format!("$SRV.{verb}.{service}"));
            self.subscribe.push(format!("$SRV.{verb}.{service}.>"));
        }
    }
}

/// The permissions of `role` in the cluster of `names`. Every role may also
/// answer the requests it receives (`allow_responses`).
pub fn permissions(names: &Names, role: ServiceRole) -> Permissions {
    let mut p = Permissions::default();
    p.subscribe.push(names.inbox_subscription(role.as_str()));
    // JetStream account info: what the client library asks first.
    p.publish.push("$JS.API.INFO".to_string());
    for stream in names.all_streams() {
        p.open_stream(&stream);
    }
    match role {
        ServiceRole::Management => {
            p.serve_micro(crate::names::MANAGEMENT_SERVICE);
            p.publish.push(names.all_op_submits());
            p.publish.push(names.all_node_submits());
            p.publish.push(names.op_cancel("*"));
            p.publish.push(names.repository_put());
            // /v1/cluster lists the management instances that answer.
            p.publish
                .push(format!("$SRV.PING.{}", crate::names::MANAGEMENT_SERVICE));
            p.subscribe.push(names.all_heartbeats());
            p.subscribe.push(names.all_management_subjects());
            p.write_kv(&names.contexts_bucket());
            p.write_kv(&names.resources_bucket());
            p.read_kv(&names.module_index_bucket());
            p.read_stream(&names.events_stream());
            p.read_stream(&names.logs_stream());
            p.write_objects(&names.upload_objects());
        }
        ServiceRole::Repository => {
            p.serve_micro(crate::names::REPOSITORY_SERVICE);
            p.subscribe.push(names.repository_endpoints());
            p.publish.push(names.module_announce("*"));
            p.write_kv(&names.module_index_bucket());
            p.write_objects(&names.module_objects());
            // Uploads are deleted once stored or refused.
            p.write_objects(&names.upload_objects());
        }
        ServiceRole::Agent => {
            p.serve_micro(crate::names::AGENT_NODE_SERVICE);
            p.publish.push(names.all_heartbeats());
            p.publish.push(names.management_register("*"));
            p.publish
                .push(format!("$SRV.PING.{}", crate::names::MANAGEMENT_SERVICE));
            // Event appends are JetStream publishes to the event subjects.
            p.publish.push(names.all_op_events());
            // Driver log lines are plain publishes the logs stream keeps.
            p.publish.push(names.all_op_logs());
            p.subscribe.push(names.all_op_submits());
            // A lead running a batch hands its children to their zones.
            p.publish.push(names.all_op_submits());
            p.publish.push(names.all_node_submits());
            p.subscribe.push(names.op_cancel("*"));
            p.subscribe.push(names.all_node_subjects());
            // A lead's connection closing starts the next election at once.
            p.subscribe.push(crate::names::client_disconnects());
            p.write_kv(&names.contexts_bucket());
            // The lead's purge turns per-message TTLs on for a contexts
            // bucket made without them.
            p.publish.push(format!(
                "$JS.API.STREAM.UPDATE.KV_{}",
                names.contexts_bucket()
            ));
            p.write_kv(&names.lead_bucket());
            p.write_kv(&names.resources_bucket());
            p.read_kv(&names.module_index_bucket());
            p.read_objects(&names.module_objects());
            p.read_stream(&names.events_stream());
        }
    }
    p
}

/// The permissions of agent node `node`: an agent's, except that it may
/// publish only its own heartbeat and serve only its own endpoints, so one
/// node cannot speak for another. It still hears every node's heartbeat.
pub fn node_permissions(names: &Names, node: &str) -> Permissions {
    let mut p = permissions(names, ServiceRole::Agent);
    let (all_heartbeats, all_node_subjects) = (names.all_heartbeats(), names.all_node_subjects());
    p.publish.retain(|s| *s != all_heartbeats);
    p.publish.push(names.heartbeat(node));
    p.subscribe.retain(|s| *s != all_node_subjects);
    p.subscribe.push(names.node_subjects(node));
    p.subscribe.push(all_heartbeats);
    p
}

/// One user of the generated configuration; `permissions: None` is the admin.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub password: String,
    pub permissions: Option<Permissions>,
}

/// The nats-server configuration for `users`, to `include` from the
/// server's own: every user in the [`NATS_ACCOUNT`] account (with
/// JetStream), which imports its own client disconnect notices from the
/// system account; `system` is the one user of that system account, for
/// operators (`nats server report ...`).
pub fn render_accounts(users: &[User], system: &User) -> String {
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("            {}", quote(s)))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    let disconnects = quote(&account_disconnects(NATS_ACCOUNT));
    let mut out = format!(
        "# Generated by `zf-management nats-auth`: one NATS user per zerofoot service role\n\
         # and cluster, each allowed only the subjects it needs, `admin` for operators,\n\
         # and `{system}` in the system account. Keep this file private (it holds the\n\
         # passwords); regenerate it after changing the clusters or rotating a password.\n\
         # The nodes hear at once that a lead's connection closed through the import.\n\
         system_account: {NATS_SYSTEM_ACCOUNT}\n\
         accounts {{\n  {NATS_SYSTEM_ACCOUNT}: {{\n    users = [\n      {{ user: {}, password: {} }}\n    ]\n    \
         exports = [\n      {{ stream: {disconnects} }}\n    ]\n  }}\n  \
         {NATS_ACCOUNT}: {{\n    jetstream: enabled\n    \
         imports = [\n      {{ stream: {{ account: {NATS_SYSTEM_ACCOUNT}, subject: {disconnects} }} }}\n    ]\n    \
         users = [\n",
        quote(&system.name),
        quote(&system.password),
        system = system.name,
    );
    for user in users {
        let _ = write!(
            out,
            "      {{\n        user: {}\n        password: {}\n",
            quote(&user.name),
            quote(&user.password)
        );
        if let Some(p) = &user.permissions {
            let _ = write!(
                out,
                "        permissions: {{\n          publish: {{ allow: [\n{}\n          ] }}\n          subscribe: {{ allow: [\n{}\n          ] }}\n          allow_responses: true\n        }}\n",
                list(&p.publish),
                list(&p.subscribe)
            );
        }
        out.push_str("      }\n");
    }
    out.push_str("    ]\n  }\n}\n");
    out
}

/// Why the configuration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuthFilesError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} must hold one password of 16 to 128 characters from A-Z, a-z, 0-9, '-' and '_'; delete it to get a new one")]
    BadPassword { path: PathBuf },
}

/// What [`write_auth_dir`] produced.
#[derive(Clone, Debug)]
pub struct AuthFiles {
    /// The accounts and users for nats-server.
    pub config: PathBuf,
    /// User name and password file of every user.
    pub users: Vec<(String, PathBuf)>,
}

/// Path of `user`'s password file in `dir`.
pub fn password_file(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.password"))
}

/// Writes `dir/auth.conf` for `clusters`, with one password file per user
/// (`dir/<user>.password`, mode 0600). Existing password files are kept, so
/// running it again changes nothing unless a cluster was added; delete a
/// password file to rotate that password. With `nodes`, every node id gets
/// a user of its own ([`node_permissions`]) and there is no shared agent
/// user; without, all nodes share the agent user.
pub fn write_auth_dir(
    dir: &Path,
    clusters: &[ClusterName],
    nodes: &[String],
) -> Result<AuthFiles, AuthFilesError> {
    create_private_dir(dir)?;
    let mut users = Vec::new();
    let mut files = Vec::new();
    let mut add = |name: String, permissions: Option<Permissions>| {
        let path = password_file(dir, &name);
        let password = read_or_make_password(&path)?;
        files.push((name.clone(), path));
        users.push(User {
            name,
            password,
            permissions,
        });
        Ok::<(), AuthFilesError>(())
    };
    add(ADMIN_USER.to_string(), None)?;
    for cluster in clusters {
        let names = Names::new(cluster.clone());
        for role in ServiceRole::ALL {
            if role == ServiceRole::Agent && !nodes.is_empty() {
                continue;
            }
            add(user_name(cluster, role), Some(permissions(&names, role)))?;
        }
        for node in nodes {
            add(
                node_user_name(cluster, node),
                Some(node_permissions(&names, node)),
            )?;
        }
    }
    let system_file = password_file(dir, SYSTEM_USER);
    let system = User {
        name: SYSTEM_USER.to_string(),
        password: read_or_make_password(&system_file)?,
        permissions: None,
    };
    files.push((SYSTEM_USER.to_string(), system_file));
    let config = dir.join("auth.conf");
    write_private(&config, render_accounts(&users, &system).as_bytes())?;
    Ok(AuthFiles {
        config,
        users: files,
    })
}

fn read_or_make_password(path: &Path) -> Result<String, AuthFilesError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let password = text.trim();
            let ok = (16..=128).contains(&password.len())
                && password
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if ok {
                Ok(password.to_string())
            } else {
                Err(AuthFilesError::BadPassword {
                    path: path.to_path_buf(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use chacha20poly1305::aead::rand_core::RngCore;
            let mut bytes = [0u8; 24];
            chacha20poly1305::aead::OsRng.fill_bytes(&mut bytes);
            let password = hex::encode(bytes);
            write_private(path, format!("{password}\n").as_bytes())?;
            Ok(password)
        }
        Err(source) => Err(AuthFilesError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), AuthFilesError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AuthFilesError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes through a temporary file and a rename, readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthFilesError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    result.map_err(|source| AuthFilesError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new("prod".parse().expect("cluster"))
    }

    fn allows(patterns: &[String], subject: &str) -> bool {
        patterns.iter().any(|p| subject_matches(p, subject))
    }

    /// NATS wildcard matching: `*` one token, `>` the rest.
    fn subject_matches(pattern: &str, subject: &str) -> bool {
        let mut s = subject.split('.');
        for token in pattern.split('.') {
            match (token, s.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (t, Some(x)) if t == x => {}
                _ => return false,
            }
        }
        s.next().is_none()
    }

    #[test]
    fn only_the_repository_writes_modules() {
        let n = names();
        let index_put = format!("$KV.{}.shell.1.0.0", n.module_index_bucket());
        let object_put = format!("$O.{}.C.abc", n.module_objects());
        for role in ServiceRole::ALL {
            let p = permissions(&n, role);
            let expected = role == ServiceRole::Repository;
            assert_eq!(allows(&p.publish, &index_put), expected, "{role:?}");
            assert_eq!(allows(&p.publish, &object_put), expected, "{role:?}");
        }
    }

    #[test]
    fn the_repository_cannot_write_contexts_and_nobody_reads_other_clusters() {
        let n = names();
        let repo = permissions(&n, ServiceRole::Repository);
        assert!(!allows(
            &repo.publish,
            &format!("$KV.{}.x", n.contexts_bucket())
        ));
        let other = Names::new("other".parse().expect("cluster"));
        for role in ServiceRole::ALL {
            let p = permissions(&n, role);
            for subject in [
                other.op_submit("default"),
                other.heartbeat("n1"),
                other.op_events("1"),
                format!("$KV.{}.x", other.contexts_bucket()),
                format!("$JS.API.CONSUMER.CREATE.KV_{}", other.contexts_bucket()),
            ] {
                assert!(!allows(&p.subscribe, &subject), "{role:?} sub {subject}");
                assert!(!allows(&p.publish, &subject), "{role:?} pub {subject}");
            }
        }
    }

    #[test]
    fn agents_do_what_a_node_does() {
        let n = names();
        let p = permissions(&n, ServiceRole::Agent);
        for subject in [
            n.heartbeat("node-1"),
            n.op_events("42"),
            n.management_register("m1"),
            format!("$KV.{}.42", n.contexts_bucket()),
            format!("$KV.{}.lead", n.lead_bucket()),
            n.op_submit("zone-b"),
        ] {
            assert!(allows(&p.publish, &subject), "publish {subject}");
        }
        for subject in [
            n.op_submit("default"),
            n.op_cancel("42"),
            n.node_mirror("node-1"),
        ] {
            assert!(allows(&p.subscribe, &subject), "subscribe {subject}");
        }
    }

    #[test]
    fn a_node_speaks_only_for_itself() {
        let n = names();
        let p = node_permissions(&n, "node-1");
        assert!(allows(&p.publish, &n.heartbeat("node-1")));
        assert!(
            !allows(&p.publish, &n.heartbeat("node-2")),
            "another's heartbeat"
        );
        assert!(allows(&p.subscribe, &n.node_mirror("node-1")));
        assert!(
            !allows(&p.subscribe, &n.node_mirror("node-2")),
            "another's mirror"
        );
        assert!(
            allows(&p.subscribe, &n.heartbeat("node-2")),
            "hears every node"
        );
        assert!(allows(&p.publish, &n.op_events("42")));
        assert!(allows(&p.subscribe, &n.op_submit("zone-a")));
        assert!(allows(&p.subscribe, &n.node_submit("node-1")));
        assert!(
            !allows(&p.subscribe, &n.node_submit("node-2")),
            "another's submissions"
        );
        assert!(
            allows(&p.publish, &n.node_submit("node-2")),
            "a lead hands a batch's child to the node its resource prefers"
        );
    }

    #[test]
    fn the_rendered_block_lists_every_user() {
        let n = names();
        let users = vec![
            User {
                name: ADMIN_USER.into(),
                password: "a".repeat(16),
                permissions: None,
            },
            User {
                name: user_name(n.cluster(), ServiceRole::Agent),
                password: "b".repeat(16),
                permissions: Some(permissions(&n, ServiceRole::Agent)),
            },
        ];
        let system = User {
            name: SYSTEM_USER.into(),
            password: "c".repeat(16),
            permissions: None,
        };
        let text = render_accounts(&users, &system);
        assert!(text.contains("user: \"zf-prod-agent\""));
        assert!(text.contains("allow_responses: true"));
        assert_eq!(text.matches("permissions:").count(), 1);
        assert!(text.contains("system_account: SYS"));
        assert_eq!(
            text.matches("\"$SYS.ACCOUNT.ZEROFOOT.DISCONNECT\"").count(),
            2,
            "exported by the system account and imported by zerofoot's: {text}"
        );
    }

    #[test]
    fn password_files_are_kept_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster: ClusterName = "c1".parse().expect("cluster");
        let first = write_auth_dir(dir.path(), std::slice::from_ref(&cluster), &[]).expect("write");
        assert_eq!(first.users.len(), 5, "system, admin and three roles");
        let config = std::fs::read_to_string(&first.config).expect("config");
        let again =
            write_auth_dir(dir.path(), std::slice::from_ref(&cluster), &[]).expect("write again");
        assert_eq!(
            config,
            std::fs::read_to_string(&again.config).expect("config")
        );
        std::fs::write(password_file(dir.path(), ADMIN_USER), "short").expect("write");
        let err = write_auth_dir(dir.path(), &[cluster], &[]).expect_err("bad password");
        assert!(err.to_string().contains("delete it"), "{err}");
    }
}
