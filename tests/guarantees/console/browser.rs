//! The console's pages in a real browser (headless Chromium): the fleet
//! page shows the demo's checkout handlers with counts that move while the
//! page stays open, without a reload; a dead letter is found, opened and
//! replayed; an order's story is told; state is browsed. A screenshot of
//! each state is kept in `target/test-artifacts/`.

use std::time::Duration;

use crate::support::chaos::*;
use crate::support::web::*;
use crate::support::*;
use eventhost_provider::Control;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_page_shows_live_counts() {
    // The demo's checkout handlers, the provider answering every call.
    let (nats, _plugins, provider, runtime) = super::story::checkout().await;
    provider.set_control(Control::default());
    let js = nats.jetstream().await;
    let orders = async |range: std::ops::Range<usize>| {
        for i in range.clone() {
            let order = crate::http::order(&format!("o-{i}"), 10.0);
            publish(&js, "orders.created", order.structured()).await;
        }
        collect(&js, "CHECKOUT", "notifications.sent", range.end, WAIT).await;
    };
    orders(0..3).await;

    let browser = Browser::start().await;
    let url = format!("http://127.0.0.1:{}/ui", runtime.admin_port());
    browser.client.goto(&url).await.unwrap();
    let succeeded =
        |handler: &str| format!(r#"tr[data-handler="{handler}"] td[data-field="succeeded"]"#);
    for handler in ["payment", "notification", "inventory"] {
        browser
            .text_once(&succeeded(handler), WAIT, |text| text == "3")
            .await;
    }
    // A mark on this page: gone if the page were loaded again.
    let mark = "window.eventhostTestMark = 'first load'; return 1;";
    browser.client.execute(mark, vec![]).await.unwrap();
    browser.screenshot("console-fleet-before").await;

    orders(3..8).await;
    for handler in ["payment", "notification", "inventory"] {
        browser
            .text_once(&succeeded(handler), WAIT, |text| text == "8")
            .await;
    }
    let still = (browser.client)
        .execute("return window.eventhostTestMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(still, json!("first load"), "the page was reloaded");
    let state = r#"tr[data-handler="payment"] td[data-field="state"]"#;
    browser
        .text_once(state, WAIT, |text| text == "serving")
        .await;
    browser.screenshot("console-fleet").await;
    browser.close().await;
}

/// The dead-letter page: letters found by a filter, one opened, a replay
/// refused without the operator's token, then done with it, and the
/// replayed event's new fate shown as it comes.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_found_opened_and_replayed_in_the_browser() {
    use super::dlq::{TOKEN, manifest, runtime_with_token};
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &manifest(true));
    let runtime = runtime_with_token(&nats, &plugins);
    let js = nats.jetstream().await;
    send(&js, "broken-1", json!({"action": "fail-if-broken"})).await;
    send(&js, "rejected", json!({"action": "fail-permanent"})).await;
    dead_letters(&js, "chaos", 2, WAIT).await;
    drop(runtime);
    plugins.install("chaos", "chaos", &manifest(false));
    let runtime = runtime_with_token(&nats, &plugins);

    let browser = Browser::start().await;
    let url = format!("http://127.0.0.1:{}/ui/dlq", runtime.admin_port());
    browser.client.goto(&url).await.unwrap();
    browser.fill("#filter input[name=handler]", "chaos").await;
    browser.fill("#filter input[name=text]", "is broken").await;
    browser.click("#filter button").await;
    let summary = browser
        .text_once("#summary", WAIT, |t| t.starts_with('1'))
        .await;
    assert!(
        summary.starts_with("1 of 2 dead letters match"),
        "{summary}"
    );
    browser
        .click(r#"#letters tbody tr td[data-field="sequence"] a"#)
        .await;
    browser
        .text_once("#payload", WAIT, |t| t.contains("fail-if-broken"))
        .await;
    let story = browser.element("#letter-story").await.attr("href").await;
    assert_eq!(
        story.unwrap().as_deref(),
        Some("/ui/story?q=broken-1&by=id")
    );
    browser.screenshot("console-dead-letter").await;

    // Without the token: refused, said on the page, nothing replayed.
    browser.click("#replay-one").await;
    browser.click("#confirm-yes").await;
    let error = browser.text_once("#error", WAIT, |t| !t.is_empty()).await;
    assert!(error.contains("needs an operator token"), "{error}");

    browser.fill("#token", TOKEN).await;
    browser.click("#token-form button").await;
    browser
        .text_once("#operator", WAIT, |t| t == "acting as ops")
        .await;
    browser.click("#replay-one").await;
    browser.click("#confirm-yes").await;
    browser
        .text_once("#report-summary", WAIT, |t| t == "replayed 1")
        .await;
    let fate = r#"#fates tbody tr td[data-field="fate"]"#;
    browser.text_once(fate, WAIT, |t| t == "succeeded").await;
    browser.screenshot("console-dead-letter-replayed").await;
    let counts = outputs_by_input(&js, 1).await;
    assert_eq!(counts, [("broken-1".to_string(), 1)].into());
    browser.close().await;
}

/// The state page: a bucket opened, a value shown as pretty JSON, and an
/// account's events in order.
#[tokio::test(flavor = "multi_thread")]
async fn state_is_browsed_in_the_browser() {
    let (_nats, _plugins, runtime) = super::state::state_host().await;
    let browser = Browser::start().await;
    let url = format!("http://127.0.0.1:{}/ui/state", runtime.admin_port());
    browser.client.goto(&url).await.unwrap();
    browser
        .click(r#"#buckets tr[data-bucket="counters"] a"#)
        .await;
    browser.click(r#"#keys button[data-key="apples"]"#).await;
    browser.text_once("#value-body", WAIT, |t| t == "7").await;
    browser
        .fill(
            "#subject-form input[name=subject]",
            "accounts.events.acct-1",
        )
        .await;
    browser.click("#subject-form button").await;
    let summary = browser
        .text_once("#events-summary", WAIT, |t| !t.is_empty())
        .await;
    assert!(
        summary.starts_with("3 events on accounts.events.acct-1"),
        "{summary}"
    );
    browser.screenshot("console-state").await;
    browser.close().await;
}

/// The story page: an order found by its order id shows the order, then
/// the payment it caused, with payment's failed attempts before its
/// success, inventory's step, and notification's.
#[tokio::test(flavor = "multi_thread")]
async fn an_orders_story_is_told_in_the_browser() {
    use super::story::{checkout, story_of, two_orders};
    let (nats, _plugins, provider, runtime) = checkout().await;
    two_orders(&nats, &provider, &runtime).await;
    story_of(runtime.admin_port(), "ok", 2);

    let browser = Browser::start().await;
    let url = format!("http://127.0.0.1:{}/ui/story", runtime.admin_port());
    browser.client.goto(&url).await.unwrap();
    browser.fill("#search input[name=q]", "ok").await;
    browser.click("#search button").await;
    let summary = browser
        .text_once("#summary", WAIT, |t| t.starts_with("2 events"))
        .await;
    assert_eq!(summary, "2 events, found by key");
    let steps = (browser.client)
        .execute(
            "return [...document.querySelectorAll('#timeline tr[data-handler]')]\
             .map(tr => tr.closest('li').dataset.type + ' ' + tr.dataset.handler + ' ' + tr.dataset.outcome);",
            vec![],
        )
        .await
        .unwrap();
    let steps: Vec<String> = serde_json::from_value(steps).unwrap();
    let order = "com.example.order.created";
    let paid = "com.example.payment.completed";
    // The order's steps, then the payment's: payment's failed attempts
    // before its success, inventory's beside them, notification's last.
    let (of_order, of_payment) = steps.split_at(steps.len() - 1);
    assert_eq!(
        of_payment,
        [format!("{paid} notification succeeded")],
        "{steps:?}"
    );
    let payment: Vec<&String> = (of_order.iter())
        .filter(|s| s.contains(" payment "))
        .collect();
    let (succeeded, retried) = payment.split_last().unwrap();
    assert!(!retried.is_empty(), "{steps:?}");
    assert!(
        retried
            .iter()
            .all(|s| **s == format!("{order} payment retried")),
        "{steps:?}"
    );
    assert_eq!(**succeeded, format!("{order} payment succeeded"));
    let inventory = format!("{order} inventory succeeded");
    assert_eq!(of_order.len(), payment.len() + 1, "{steps:?}");
    assert!(of_order.contains(&inventory), "{steps:?}");
    let record = r#"li[data-type="com.example.order.created"] [data-record-of="payment"]"#;
    browser
        .text_once(record, WAIT, |t| t == "payment succeeded")
        .await;
    // The address keeps the search: the story can be shared as a link.
    let shared = browser.client.current_url().await.unwrap();
    assert!(shared.as_str().ends_with("/ui/story?q=ok"), "{shared}");
    browser.screenshot("console-story").await;
    browser.close().await;
}
