//! A real Prometheus for tests: Debian's `prometheus` started on a loopback
//! port with its own store and a generated config scraping the given
//! targets every 500 ms, and queried through its HTTP API.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{free_port, Process};

/// The prometheus binary: `ZF_PROMETHEUS`, else `prometheus` on PATH.
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("ZF_PROMETHEUS") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("prometheus"))
                .find(|candidate| candidate.is_file())
        })
        .expect("prometheus is not installed; scripts/install-deps.sh installs Debian's package")
}

pub struct Prometheus {
    pub process: Process,
    port: u16,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus in `dir` scraping `targets`: (job, host:port), the
    /// targets of one job next to each other.
    pub fn start(dir: &Path, targets: &[(&str, String)]) -> Self {
        let mut config = String::from(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n",
        );
        let mut jobs: Vec<&str> = targets.iter().map(|(job, _)| *job).collect();
        jobs.dedup();
        for job in jobs {
            let addresses: Vec<String> = targets
                .iter()
                .filter(|(j, _)| *j == job)
                .map(|(_, target)| format!("'{target}'"))
                .collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                addresses.join(", ")
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let port = free_port();
        let args = vec![
            format!("--config.file={}", config_file.display()),
            format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        let process = Process::spawn("prometheus", &binary(), &args, &[], dir);
        Self {
            process,
            port,
            http: reqwest::Client::new(),
        }
    }

    /// The vector an instant query answers: (labels, value) per series.
    pub async fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>, String> {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(|e| format!("prometheus not answering yet: {e}"))?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("prometheus answered no JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("query {promql} failed: {body}"));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|series| {
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                (series["metric"].clone(), value)
            })
            .collect())
    }
}
