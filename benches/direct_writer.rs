//! The database's own ceiling for a registration storm: inserts the rows a storm of N
//! fresh instances produces (instance, health_check, 3 instance_metadata each) in ideal
//! batches, straight into the database, with no RPC, validation or batching in front.
//! batchreg's storm rate is quoted as a ratio of this, measured in the same run.
//!
//! cargo bench --bench direct_writer -- --url mysql://root@127.0.0.1:3306/bench --count 100000
//! cargo bench --bench direct_writer -- --url sqlite:///tmp/direct.db --count 100000
//!
//! On SQLite it writes on one connection (SQLite has one writer) with batchreg's pragmas,
//! except that SQLite checkpoints the WAL itself, inside commits.
//!
//! With `--rate R` it measures latency instead: one instance per transaction, due every
//! 1/R s on one connection (an open loop, as `batchreg-loadgen open-loop`), and prints
//! p50/p99/p99.9/max of each transaction from its due time. That is the floor under
//! batchreg's own latency at a low offered rate.
//!
//! cargo bench --bench direct_writer -- --url mysql://root@127.0.0.1:3306/bench --rate 200 --count 6000

use std::time::Instant;

use clap::Parser;
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

#[derive(Parser)]
struct Args {
    /// A MySQL database or a SQLite file; its batchreg tables are created (migrated) and
    /// emptied first.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Instances per transaction.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Concurrent connections, each writing its own share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 3)]
    metadata: usize,
    /// Transactions of one instance each, due at this rate, on one connection.
    #[arg(long)]
    rate: Option<f64>,
    /// Accepted and ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn placeholders(rows: usize, row: &str) -> String {
    vec![row; rows].join(",")
}

async fn write_share(
    pool: mysql_async::Pool,
    ids: Vec<usize>,
    args_batch: usize,
    metadata: usize,
) -> mysql_async::Result<()> {
    let mut conn = pool.get_conn().await?;
    for chunk in ids.chunks(args_batch) {
        write_batch(&mut conn, chunk, metadata).await?;
    }
    Ok(())
}

/// One transaction inserting instances `chunk`.
async fn write_batch(
    conn: &mut mysql_async::Conn,
    chunk: &[usize],
    metadata: usize,
) -> mysql_async::Result<()> {
    {
        let mut tx = conn.start_transaction(Default::default()).await?;
        let mut instance = Vec::with_capacity(chunk.len() * 8);
        let mut checks = Vec::with_capacity(chunk.len() * 2);
        let mut meta = Vec::with_capacity(chunk.len() * metadata * 3);
        for &n in chunk {
            let (id, service, host, entries) = rows_of(n, metadata);
            instance.extend([
                Value::from(&id),
                Value::from(service),
                Value::from(host),
                Value::from(8080u32),
                Value::from("grpc"),
                Value::from("1.0.0"),
                Value::from(100u32),
                Value::from(&id[..32]),
            ]);
            checks.extend([Value::from(&id), Value::from(5u32)]);
            for (k, v) in entries {
                meta.extend([Value::from(&id), Value::from(k), Value::from(v)]);
            }
        }
        tx.exec_drop(
            format!(
                "INSERT INTO instance (id, service_id, host, port, protocol, version, weight, revision) VALUES {}",
                placeholders(chunk.len(), "(?,?,?,?,?,?,?,?)")
            ),
            Params::Positional(instance),
        )
        .await?;
        tx.exec_drop(
            format!(
                "INSERT INTO health_check (id, type, ttl) VALUES {}",
                placeholders(chunk.len(), "(?,1,?)")
            ),
            Params::Positional(checks),
        )
        .await?;
        if metadata > 0 {
            tx.exec_drop(
                format!(
                    "INSERT INTO instance_metadata (id, mkey, mvalue) VALUES {}",
                    placeholders(chunk.len() * metadata, "(?,?,?)")
                ),
                Params::Positional(meta),
            )
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// Latency from each transaction's due time, in µs.
fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn report_latency(args: &Args, rate: f64, latency: &hdrhistogram::Histogram<u64>) {
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "direct writer at {rate}/s: {} transactions of 1 instance ({} metadata), latency from the due time: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        args.count,
        args.metadata,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        latency.max() as f64 / 1000.0
    );
}

/// Open loop on MySQL: instance `n` is due `n / rate` s after the start.
async fn paced_mysql(pool: &mysql_async::Pool, args: &Args, rate: f64) {
    let mut conn = pool.get_conn().await.unwrap();
    let mut latency = latency_histogram();
    let started = tokio::time::Instant::now();
    for n in 0..args.count {
        let due = started + std::time::Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due).await;
        write_batch(&mut conn, &[n], args.metadata)
            .await
            .expect("write");
        latency.saturating_record(due.elapsed().as_micros() as u64);
    }
    report_latency(args, rate, &latency);
}

/// The rows of instance `n`: id, instance values, and its metadata entries. The id is
/// batchreg's own (a SHA-1), so rows land in the B-trees in the same random order as in
/// a storm, not appended in key order.
fn rows_of(n: usize, metadata: usize) -> (String, String, String, Vec<(String, String)>) {
    let host = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    let service = format!("{:032x}", n % 10);
    let id = batchreg::naming::instance_id::instance_id("direct", &service, "", &host, 8080);
    let entries = (0..metadata)
        .map(|k| (format!("k{k}"), format!("value-{n:08}-{k}")))
        .collect();
    (id, service, host, entries)
}

fn write_sqlite(path: &str, args: &Args) -> std::time::Duration {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.pragma_update(None, "temp_store", "MEMORY").unwrap();
    // batchreg's page cache and memory map; checkpoints stay SQLite's automatic ones.
    conn.pragma_update(None, "cache_size", -65_536).unwrap();
    conn.pragma_update(None, "mmap_size", 268_435_456).unwrap();
    for table in ["instance_metadata", "health_check", "instance"] {
        conn.execute(&format!("DELETE FROM {table}"), []).unwrap();
    }
    let started = Instant::now();
    let ids: Vec<usize> = (0..args.count).collect();
    for chunk in ids.chunks(args.batch) {
        let tx = conn.transaction().unwrap();
        let rows: Vec<_> = chunk.iter().map(|&n| rows_of(n, args.metadata)).collect();
        let mut instance: Vec<&dyn rusqlite::ToSql> = Vec::new();
        let mut checks: Vec<&dyn rusqlite::ToSql> = Vec::new();
        let mut meta: Vec<&dyn rusqlite::ToSql> = Vec::new();
        for (id, service, host, entries) in &rows {
            instance.extend([id as &dyn rusqlite::ToSql, service, host, id]);
            checks.push(id);
            for (k, v) in entries {
                meta.extend([id as &dyn rusqlite::ToSql, k, v]);
            }
        }
        let now = "2026-01-01 00:00:00.000";
        tx.execute(
            &format!(
                "INSERT INTO instance (id, service_id, host, port, protocol, version, weight, revision, ctime, mtime) VALUES {}",
                placeholders(chunk.len(), &format!("(?,?,?,8080,'grpc','1.0.0',100,?,'{now}','{now}')"))
            ),
            rusqlite::params_from_iter(instance),
        )
        .unwrap();
        tx.execute(
            &format!(
                "INSERT INTO health_check (id, type, ttl) VALUES {}",
                placeholders(chunk.len(), "(?,1,5)")
            ),
            rusqlite::params_from_iter(checks),
        )
        .unwrap();
        if args.metadata > 0 {
            tx.execute(
                &format!(
                    "INSERT INTO instance_metadata (id, mkey, mvalue, ctime, mtime) VALUES {}",
                    placeholders(
                        chunk.len() * args.metadata,
                        &format!("(?,?,?,'{now}','{now}')")
                    )
                ),
                rusqlite::params_from_iter(meta),
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    started.elapsed()
}

fn report(args: &Args, connections: usize, elapsed: std::time::Duration) {
    println!(
        "direct writer: {} instances in {:.3} s = {:.1} instances/s ({} per transaction, {} connections, {} metadata)",
        args.count,
        elapsed.as_secs_f64(),
        args.count as f64 / elapsed.as_secs_f64(),
        args.batch,
        connections,
        args.metadata
    );
}

fn main() {
    let args = Args::parse();
    // Creates the tables exactly as batchreg does.
    drop(
        batchreg::store::open(&batchreg::store::StoreOptions {
            url: args.url.clone(),
            sqlite_synchronous: Default::default(),
            concurrency: None,
        })
        .expect("database reachable"),
    );
    if let Some(path) = args.url.strip_prefix("sqlite://") {
        assert!(args.rate.is_none(), "--rate is measured on MySQL only");
        let elapsed = write_sqlite(path, &args);
        report(&args, 1, elapsed);
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = mysql_async::Pool::new(args.url.as_str());
        let mut conn = pool.get_conn().await.unwrap();
        for table in ["instance_metadata", "health_check", "instance"] {
            conn.query_drop(format!("DELETE FROM {table}"))
                .await
                .unwrap();
        }
        drop(conn);
        if let Some(rate) = args.rate {
            paced_mysql(&pool, &args, rate).await;
            pool.disconnect().await.unwrap();
            return;
        }
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..args.connections {
            let ids: Vec<usize> = (c..args.count).step_by(args.connections).collect();
            tasks.spawn(write_share(pool.clone(), ids, args.batch, args.metadata));
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().expect("write");
        }
        report(&args, args.connections, started.elapsed());
        pool.disconnect().await.unwrap();
    });
}
