//! The fleet section: runtime processes sharing one consumer against a
//! three-node cluster, to show the trend as processes are added (two cores
//! run the cluster, the publisher and every runtime, so not capacity).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;

use crate::native::Workload;
use crate::processes::{self, NatsCluster};
use crate::{Bench, Settings, load};

/// A three-node cluster, a client of it, and a [`Bench`] whose runtimes
/// keep three copies of everything.
pub async fn cluster(work: &Path) -> Result<(NatsCluster, jetstream::Context, Bench)> {
    let cluster = NatsCluster::start(work, 3)?;
    let js = jetstream::new(processes::connect(&cluster.url).await?);
    let config = work.join("fleet.toml");
    std::fs::write(&config, "replicas = 3\n")?;
    let bench = Bench {
        nats_url: cluster.url.clone(),
        work: work.to_path_buf(),
        config: Some(config),
    };
    Ok((cluster, js, bench))
}

/// [`load::reset_with_replicas`] with three copies, once the cluster has
/// elected its meta leader (in its first seconds).
pub async fn reset_when_ready(js: &jetstream::Context) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Err(err) = load::reset_with_replicas(js, 3).await {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "cluster not ready: {err:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// The payment workload at saturation with each number of runtime processes
/// in `settings.fleet` (1, 2 and 3 in a full run) against a three-node
/// cluster (streams, buckets, dead letters: R3).
pub async fn run(settings: &Settings, work: &Path) -> Result<Vec<(usize, f64)>> {
    let (cluster, js, bench) = cluster(work).await?;
    let workload = Workload::Payment;
    let mut figures = Vec::new();
    for &processes in &settings.fleet {
        eprintln!("== fleet: {processes} runtime process(es), three-node cluster");
        reset_when_ready(&js).await?;
        let runtimes = bench.runtime(&[(workload, "payment", 16)], processes)?;
        load::saturation(&js, workload, 200)
            .await
            .context("warming up")?;
        let measured = load::saturation(&js, workload, settings.scaling_events).await?;
        drop(runtimes);
        figures.push((processes, measured.throughput));
    }
    eprintln!(
        "   cluster CPU used: {:.1} s",
        cluster.cpu_time()?.as_secs_f64()
    );
    Ok(figures)
}
