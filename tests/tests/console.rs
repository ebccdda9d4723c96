//! The web console as an operator uses it: a real headless chromium
//! (Debian's, through chromedriver) against a real cluster with tokens and
//! three fast-beating nodes. It signs in (a wrong token is refused with a
//! clear 401), starts the example ticker monitor from its generated form and
//! watches its events arrive, sees the lead SIGKILLed turn red and another
//! node lead without a reload, sees the events go on from the new lead and
//! resume after management restarts, cancels the monitor, runs a sync
//! operation from a schema-generated form (then sees a violation), filters
//! operations, lists resources without their secrets, shows 403 for a
//! viewer, works token-less on loopback and says 503 while management has no
//! NATS, and reads at laptop and phone width with every field labelled.
//! Screenshots of each view land in `ZF_CONSOLE_SCREENSHOTS` (else in the
//! test's dir); docs/console-*.png were taken so.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zerofoot_tests::browser::{keys, Browser};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{free_port, wait_until, Cluster, NodeFlags};

const ADMIN: &str = "console-admin-token-0123456789";
const VIEWER: &str = "console-viewer-token-0123456789";
/// A resource's secret: the console must never show it.
const SECRET: &str = "s3cret-value-never-shown";

/// A sync operation with a params schema of every kind of field: its result
/// is a greeting made of them.
const GREET: &str = r#"#!/bin/sh
jq -c '.params as $p | {type: "result", data: {greeting: ("hello, " + $p.name + (if $p.loud then "!" else "." end)), times: ($p.times // 1), tone: ($p.tone // "plain")}}'
"#;

fn greet_operations() -> Value {
    json!({"hello": {
        "kind": "sync",
        "description": "Greets someone, as often and as loudly as asked",
        "params": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "description": "Who to greet, in small letters", "pattern": "^[a-z]+$", "maxLength": 20},
                "times": {"type": "integer", "minimum": 1, "maximum": 5, "default": 1},
                "loud": {"type": "boolean", "description": "End with an exclamation mark"},
                "tone": {"enum": ["plain", "warm"], "default": "plain"}
            }
        }
    }})
}

fn fast() -> NodeFlags {
    NodeFlags(vec![
        "--heartbeat-ms".into(),
        "100".into(),
        "--lapse-ms".into(),
        "500".into(),
    ])
}

/// Where the screenshots go, named by view.
struct Shots(PathBuf);

impl Shots {
    async fn take(&self, browser: &Browser, name: &str) {
        browser
            .screenshot(&self.0.join(format!("{name}.png")))
            .await;
    }

    /// The whole page at laptop width, as long as a tall screen.
    async fn take_page(&self, browser: &Browser, name: &str) {
        browser
            .screenshot_page(&self.0.join(format!("{name}.png")), (1366, 768), 1100)
            .await;
    }
}

/// The form fields and controls of the page that no label names.
async fn unlabelled(browser: &Browser) -> Value {
    browser
        .run(
            "return [...document.querySelectorAll('input, select, textarea, button, a')]
               .filter((e) => e.offsetParent !== null)
               .filter((e) => (e.matches('input, select, textarea') ? e.labels.length === 0 : !e.innerText.trim())
                 && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
               .map((e) => e.id || e.name || e.outerHTML.slice(0, 80));",
            json!([]),
        )
        .await
}

async fn assert_labelled(browser: &Browser, view: &str) {
    let missing = unlabelled(browser).await;
    assert_eq!(missing, json!([]), "controls without a label on {view}");
}

/// How many pixels the page is wider than the window (0 when it fits).
async fn overflow(browser: &Browser) -> i64 {
    browser
        .run(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            json!([]),
        )
        .await
        .as_i64()
        .unwrap_or(i64::MAX)
}

/// The rows of the operation page's events table: (seq, node, epoch), newest first.
async fn event_rows(browser: &Browser) -> Vec<(u64, String, u64)> {
    let rows = browser
        .run(
            "return [...document.querySelectorAll('#events tbody tr')].map((r) => [
               Number(r.dataset.seq),
               r.querySelector('td[data-label=\"Node\"]').innerText,
               Number(r.querySelector('td[data-label=\"Epoch\"]').innerText)]);",
            json!([]),
        )
        .await;
    rows.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r[0].as_u64().unwrap_or(0),
                        r[1].as_str().unwrap_or_default().to_string(),
                        r[2].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The number the page shows in `css` (e.g. the events count).
async fn number(browser: &Browser, css: &str) -> u64 {
    browser
        .text(css)
        .await
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the page shows `count` node rows, all of them up.
async fn wait_nodes_up(browser: &Browser, count: usize) {
    browser
        .wait_for(
            &format!("the cluster view to show {count} nodes up"),
            Duration::from_secs(30),
            "const rows = [...document.querySelectorAll('#nodes tr[data-node]')];
             return rows.length === arguments[0] && rows.every((r) => r.dataset.status === 'up' && r.innerText.includes('up'));",
            json!([count]),
        )
        .await;
}

/// Submits the run form of `operation` and returns the id of the operation
/// whose page it opens. A 503 is pressed again, as a user would: on a loaded
/// machine management may for a moment hear no node beat within the
/// tests' short lapse.
async fn run_from_form(browser: &Browser, operation: &str) -> String {
    let button = format!("form[data-operation=\"{operation}\"] button[type=\"submit\"]");
    let problem = format!("#run-{operation}-problem");
    browser.click(&button).await;
    let (button, problem) = (&button, &problem);
    wait_until(
        &format!("the page of the {operation} just run"),
        Duration::from_secs(30),
        || async move {
            let hash = browser.hash().await;
            if let Some(id) = hash.strip_prefix("#/operations/") {
                return Ok(id.to_string());
            }
            let said = browser.text(problem).await.unwrap_or_default();
            if said.contains("503") {
                browser
                    .run(
                        "const b = document.querySelector(arguments[0]); if (!b.disabled) b.click();",
                        json!([button]),
                    )
                    .await;
            }
            Err(format!("{hash}, the form says {said:?}"))
        },
    )
    .await
}

/// The id the page leads with: the row marked lead, or null.
const LEAD_ROW: &str = "const row = document.querySelector('#nodes tr[data-lead=\"true\"]');
     return row ? row.dataset.node : null;";

async fn banner_hidden(browser: &Browser) -> bool {
    browser
        .run(
            "return document.getElementById('banner').hidden;",
            json!([]),
        )
        .await
        == json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_and_drives_the_cluster_from_the_console() {
    // Fails at once, saying how to install them, when chromium is missing.
    zerofoot_tests::browser::programs();
    let started = Instant::now();
    let mut cluster = Cluster::bare().await;
    cluster.start_repository();
    let tokens = format!("admin:{ADMIN},viewer:{VIEWER}");
    cluster.start_management_with(&[("ZF_API_TOKENS", &tokens)]);
    // The harness's own calls (waits, uploads) carry the admin token.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN}")).expect("header"),
    );
    cluster.http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    for _ in 0..3 {
        cluster.add_node(&fast());
    }
    cluster.wait_healthy().await;
    let ticker_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ticker"));
    cluster
        .publish(zerofoot_shared::bundle::pack_dir(&ticker_dir).expect("pack examples/ticker"))
        .await;
    cluster
        .publish(bundle("greet", "1.0.0", greet_operations(), GREET))
        .await;
    cluster.wait_module("ticker", "1.0.0").await;
    cluster.wait_module("greet", "1.0.0").await;
    let (status, body) = cluster
        .put_json(
            "/v1/resources/web-1",
            &json!({"kind": "http-endpoint", "config": {"port": 8080}, "labels": {"role": "web", "env": "prod"},
                    "secrets": {"password": SECRET}}),
        )
        .await;
    assert!(
        status == 200 || status == 201,
        "PUT resource: {status} {body}"
    );

    let shots = Shots(match std::env::var_os("ZF_CONSOLE_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => cluster.dir.path().join("screenshots"),
    });
    std::fs::create_dir_all(&shots.0).expect("screenshots dir");
    let browser = Browser::start(cluster.dir.path(), 1366, 768).await;
    let base = cluster.url("/#/");
    let console = |route: &str| format!("{base}{route}");

    // Signing in: a wrong token is refused in words, the right one kept for
    // the session (a reload stays signed in) and never shown.
    browser.goto(&cluster.url("/")).await;
    browser
        .wait_text("the sign-in form", "form.login h1", |t| t == "Sign in")
        .await;
    assert_labelled(&browser, "the sign-in form").await;
    browser
        .type_into("#token", &format!("not-the-right-token{}", keys::ENTER))
        .await;
    browser
        .wait_text("a clear 401 for a wrong token", "#login-message", |t| {
            t.contains("401") && t.contains("refused")
        })
        .await;
    shots.take(&browser, "login-refused").await;
    browser.clear("#token").await;
    browser
        .type_into("#token", &format!("{ADMIN}{}", keys::ENTER))
        .await;
    wait_nodes_up(&browser, 3).await;
    let shown = browser
        .run(
            "return document.documentElement.outerHTML.includes(arguments[0]);",
            json!([ADMIN]),
        )
        .await;
    assert_eq!(shown, json!(false), "the page shows the token");
    browser.goto(&console("cluster")).await;
    wait_nodes_up(&browser, 3).await;
    assert!(
        banner_hidden(&browser).await,
        "an error banner after sign-in"
    );
    let (_, overview) = cluster.get("/v1/cluster").await;
    let lead = browser
        .wait_for("a lead row", Duration::from_secs(20), LEAD_ROW, json!([]))
        .await;
    assert_eq!(lead, overview["lead"]["node"], "the highlighted lead");
    assert_labelled(&browser, "the cluster view").await;

    // The keyboard: Tab reaches "Skip to content" first, then the views;
    // Enter on one opens it.
    browser.press(keys::TAB).await;
    let focused = browser
        .run("return document.activeElement.innerText;", json!([]))
        .await;
    assert_eq!(focused, json!("Skip to content"));
    let mut reached = false;
    for _ in 0..8 {
        browser.press(keys::TAB).await;
        let text = browser
            .run("return document.activeElement.innerText;", json!([]))
            .await;
        if text == json!("Operations") {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the Operations link");
    browser.press(keys::ENTER).await;
    wait_until(
        "Enter to open the operations view",
        Duration::from_secs(10),
        || async {
            match browser.hash().await.as_str() {
                "#/operations" => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;

    // A monitor from its generated form: its events appear live.
    browser.goto(&console("modules")).await;
    browser.click("tr[data-module=\"ticker\"] a").await;
    browser
        .wait_text(
            "the ticker's form",
            "form[data-operation=\"count\"] button",
            |t| t == "Run count",
        )
        .await;
    assert_labelled(&browser, "the ticker's page").await;
    let ticker = run_from_form(&browser, "count").await;
    browser
        .wait_for(
            "the ticker's events to arrive live",
            Duration::from_secs(30),
            "return document.querySelector('#events-status').dataset.state === 'live'
               && Number(document.querySelector('#events-count').innerText) >= 3;",
            json!([]),
        )
        .await;
    assert_labelled(&browser, "the operation view").await;

    // The lead dies while the cluster view is open: its row turns red and
    // another node leads, without a reload.
    browser.click("nav a[href=\"#/cluster\"]").await;
    wait_nodes_up(&browser, 3).await;
    let first_owner = browser
        .wait_for(
            "the monitor shown on the lead",
            Duration::from_secs(20),
            "const row = document.querySelector(`#monitors tr[data-op=\"${arguments[0]}\"]`);
             if (row === null) return null;
             const owner = document.querySelector(`#nodes tr[data-node=\"${row.dataset.node}\"]`);
             return owner !== null && owner.dataset.lead === 'true' && owner.innerText.includes('ticker count')
               ? row.dataset.node : null;",
            json!([ticker]),
        )
        .await;
    let first_owner = first_owner.as_str().expect("node id").to_string();
    browser.run("window.zfNotReloaded = true;", json!([])).await;
    let index = cluster.node_index(&first_owner);
    let killed_at = Instant::now();
    cluster.nodes[index].kill();
    browser
        .wait_for(
            "the killed lead's row to turn down",
            Duration::from_secs(15),
            "const row = document.querySelector(`#nodes tr[data-node=\"${arguments[0]}\"]`);
             return row !== null && row.dataset.status === 'down' && row.innerText.includes('down');",
            json!([first_owner]),
        )
        .await;
    let turned_red = killed_at.elapsed();
    println!("the killed lead showed down after {turned_red:?}");
    let colour = browser
        .run(
            "const row = document.querySelector(`#nodes tr[data-node=\"${arguments[0]}\"]`);
             return getComputedStyle(row).backgroundColor.match(/\\d+/g).map(Number);",
            json!([first_owner]),
        )
        .await;
    let (red, green) = (
        colour[0].as_i64().unwrap_or(0),
        colour[1].as_i64().unwrap_or(0),
    );
    assert!(red > green + 15, "a down node's row is red, not {colour}");
    let new_lead = browser
        .wait_for(
            "another node to lead",
            Duration::from_secs(30),
            "const row = document.querySelector('#nodes tr[data-lead=\"true\"]');
             return row && row.dataset.node !== arguments[0] ? row.dataset.node : null;",
            json!([first_owner]),
        )
        .await;
    let new_lead = new_lead.as_str().expect("lead id").to_string();
    browser
        .wait_for(
            "the monitor to move to the new lead",
            Duration::from_secs(30),
            "const row = document.querySelector(`#monitors tr[data-op=\"${arguments[0]}\"]`);
             return row !== null && row.dataset.node === arguments[1];",
            json!([ticker, new_lead]),
        )
        .await;
    browser
        .wait_text(
            "the summary to name the new lead",
            "#cluster-summary",
            |t| t.contains(&format!("lead {new_lead}")),
        )
        .await;
    assert_eq!(
        browser
            .run("return window.zfNotReloaded === true;", json!([]))
            .await,
        json!(true),
        "the cluster view reloaded"
    );
    shots.take_page(&browser, "cluster").await;

    // The monitor goes on from the new lead: its events continue, and its
    // attempts show the failover with a higher epoch.
    browser
        .goto(&console(&format!("operations/{ticker}")))
        .await;
    let rows = wait_until(
        "events from the new lead",
        Duration::from_secs(30),
        || async {
            let rows = event_rows(&browser).await;
            if rows.first().is_some_and(|(_, node, _)| *node == new_lead)
                && rows.iter().any(|(_, node, _)| *node == first_owner)
            {
                Ok(rows)
            } else {
                Err(format!("{:?}", rows.iter().take(3).collect::<Vec<_>>()))
            }
        },
    )
    .await;
    let old_epoch = rows
        .iter()
        .find(|r| r.1 == first_owner)
        .map(|r| r.2)
        .unwrap_or(0);
    assert!(
        rows[0].2 > old_epoch,
        "the new lead's events carry a higher epoch: {rows:?}"
    );
    browser
        .wait_for(
            "the attempts to show the failover",
            Duration::from_secs(20),
            "const rows = [...document.querySelectorAll('#op-attempts tr[data-node]')];
             return rows.some((r) => r.dataset.node === arguments[0] && r.dataset.outcome === 'lost')
               && rows[rows.length - 1].dataset.node === arguments[1];",
            json!([first_owner, new_lead]),
        )
        .await;

    // Management restarts under the open page: the stream reconnects and
    // resumes after the last seq it saw, with no gap and no repeat.
    let before = number(&browser, "#events-count").await;
    let management = &mut cluster.management[0].process;
    management.kill();
    management.start();
    browser
        .wait_for(
            "the events stream to reconnect and go on",
            Duration::from_secs(40),
            "const status = document.querySelector('#events-status');
             return Number(status.dataset.connections) >= 2 && status.dataset.state === 'live'
               && Number(document.querySelector('#events-count').innerText) > arguments[0] + 5;",
            json!([before]),
        )
        .await;
    let rows = event_rows(&browser).await;
    let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] == w[1] + 1),
        "the events shown skip or repeat a seq: {seqs:?}"
    );
    assert_eq!(
        number(&browser, "#events-count").await,
        seqs[0],
        "as many events as the last seq"
    );
    shots.take_page(&browser, "operation").await;

    // Cancelling, confirmed by a second click.
    browser.click("#cancel").await;
    browser.click("#confirm-cancel").await;
    browser
        .wait_for(
            "the monitor to show cancelled",
            Duration::from_secs(30),
            "const s = document.querySelector('#op-state');
             return s && s.dataset.state === 'cancelled' && s.innerText.includes('cancelled');",
            json!([]),
        )
        .await;
    let (_, context) = cluster.get(&format!("/v1/operations/{ticker}")).await;
    assert_eq!(context["state"], "cancelled");

    // A sync operation from its schema's form, then one its schema refuses.
    browser.goto(&console("modules/greet")).await;
    let form = "form[data-operation=\"hello\"]";
    browser
        .wait_text("the greet form", &format!("{form} button"), |t| {
            t == "Run hello"
        })
        .await;
    assert_labelled(&browser, "the greet form").await;
    browser.type_into("#run-hello-param-name", "operator").await;
    browser.clear("#run-hello-param-times").await;
    browser.type_into("#run-hello-param-times", "3").await;
    browser.click("#run-hello-param-loud").await;
    browser
        .click("#run-hello-param-tone option[value=\"1\"]")
        .await;
    shots.take_page(&browser, "modules").await;
    let greeting = run_from_form(&browser, "hello").await;
    browser
        .wait_text("the greeting as the result", "#op-result", |t| {
            t.contains("hello, operator!") && t.contains("warm") && t.contains('3')
        })
        .await;
    browser
        .wait_text("the greeting's state", "#op-state", |t| {
            t.contains("complete")
        })
        .await;
    browser.goto(&console("modules/greet")).await;
    browser
        .type_into("#run-hello-param-name", "Not Small")
        .await;
    browser
        .click(&format!("{form} button[type=\"submit\"]"))
        .await;
    browser
        .wait_text("the params' violation", "#run-hello-problem", |t| {
            t.contains("422") && t.contains("/name")
        })
        .await;

    // The operations, filtered by state.
    browser.goto(&console("operations")).await;
    browser
        .wait_for(
            "both operations listed",
            Duration::from_secs(20),
            "const shown = (id) => document.querySelector(`#operations tr[data-op=\"${id}\"]`) !== null;
             return shown(arguments[0]) && shown(arguments[1]);",
            json!([ticker, greeting]),
        )
        .await;
    assert_labelled(&browser, "the operations view").await;
    browser
        .click("#filter-state option[value=\"cancelled\"]")
        .await;
    let listed = browser
        .wait_for(
            "only the cancelled monitor listed",
            Duration::from_secs(20),
            "const rows = [...document.querySelectorAll('#operations tr[data-op]')];
             return location.hash.includes('state=cancelled') && rows.length === 1 ? rows[0].dataset.op : null;",
            json!([]),
        )
        .await;
    assert_eq!(listed, json!(ticker));
    shots.take(&browser, "operations").await;

    // Resources: labels and the names of secrets, never a secret.
    browser.goto(&console("resources")).await;
    let row = browser
        .wait_text(
            "the resource",
            "#resources tr[data-resource=\"web-1\"]",
            |t| t.contains("role=web") && t.contains("password"),
        )
        .await;
    assert!(row.contains("env=prod"), "{row}");
    let leaked = browser
        .run(
            "return document.documentElement.outerHTML.includes(arguments[0]);",
            json!([SECRET]),
        )
        .await;
    assert_eq!(leaked, json!(false), "the page shows a secret");
    assert_labelled(&browser, "the resources view").await;
    shots.take(&browser, "resources").await;

    // A phone's width: everything fits, tables become cards.
    browser.resize(390, 844).await;
    let ticker_route = format!("operations/{ticker}");
    for (name, route, ready) in [
        ("cluster", "cluster", "#nodes tr[data-node]"),
        ("operation", ticker_route.as_str(), "#events tbody tr"),
        ("modules", "modules/greet", "form[data-operation=\"hello\"]"),
        ("operations", "operations", "#operations tr[data-op]"),
    ] {
        browser.goto(&console(route)).await;
        browser
            .wait_for(
                &format!("{route} at phone width"),
                Duration::from_secs(20),
                "return document.querySelector(arguments[0]) !== null;",
                json!([ready]),
            )
            .await;
        assert!(
            overflow(&browser).await <= 0,
            "{route} is wider than a phone"
        );
        assert!(banner_hidden(&browser).await, "an error banner on {route}");
        shots.take(&browser, &format!("{name}-phone")).await;
    }
    browser.resize(1366, 768).await;

    // A viewer may look but not run: 403 in words.
    browser.click("#sign-out").await;
    browser
        .type_into("#token", &format!("{VIEWER}{}", keys::ENTER))
        .await;
    browser
        .wait_for(
            "the viewer signed in",
            Duration::from_secs(20),
            "return document.querySelector('form.login') === null && !document.getElementById('nav').hidden;",
            json!([]),
        )
        .await;
    browser.goto(&console("modules/greet")).await;
    browser.type_into("#run-hello-param-name", "viewer").await;
    browser
        .click(&format!("{form} button[type=\"submit\"]"))
        .await;
    browser
        .wait_text("a clear 403 for a viewer", "#run-hello-problem", |t| {
            t.contains("403") && t.contains("role")
        })
        .await;

    // Without tokens, loopback needs none; without NATS, 503 in words.
    let dead_nats = format!("nats://127.0.0.1:{}", free_port());
    let open = cluster.start_management_with(&[("ZF_NATS_URL", &dead_nats)]);
    let open_url = cluster.management[open].url("/#/cluster");
    let healthz = cluster.management[open].url("/healthz");
    wait_until(
        "the token-less instance to listen",
        Duration::from_secs(20),
        || async {
            // 503 until it reaches NATS, which it never does.
            match reqwest::get(&healthz).await {
                Ok(response) => Ok(response.status()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    browser.goto(&open_url).await;
    browser
        .wait_text("a clear 503 without NATS", "main .error", |t| {
            t.contains("503")
        })
        .await;
    let session = browser.text("#session").await.unwrap_or_default();
    assert!(session.contains("no token needed"), "{session}");
    shots.take(&browser, "unavailable").await;

    println!(
        "screenshots in {}; the console test took {:?}",
        shots.0.display(),
        started.elapsed()
    );
}
