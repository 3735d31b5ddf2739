//! The database's own ceiling for a registration storm: inserts the rows a storm of N
//! fresh instances produces (instance, health_check, 3 instance_metadata each) in ideal
//! batches, straight into the database, with no RPC, validation or batching in front.
//! batchreg's storm rate is quoted as a ratio of this, measured in the same run.
//!
//! cargo bench --bench direct_writer -- --url mysql://root@127.0.0.1:3306/bench --count 100000

use std::time::Instant;

use clap::Parser;
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Value};

#[derive(Parser)]
struct Args {
    /// A MySQL database; its batchreg tables are created (migrated) and emptied first.
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
        let mut tx = conn.start_transaction(Default::default()).await?;
        let mut instance = Vec::with_capacity(chunk.len() * 8);
        let mut checks = Vec::with_capacity(chunk.len() * 2);
        let mut meta = Vec::with_capacity(chunk.len() * metadata * 3);
        for &n in chunk {
            let id = format!("{:040x}", n as u128 * 0x9E37_79B9_7F4A_7C15);
            instance.extend([
                Value::from(&id),
                Value::from(format!("{:032x}", n % 10)),
                Value::from(format!(
                    "10.{}.{}.{}",
                    (n >> 16) & 0xff,
                    (n >> 8) & 0xff,
                    n & 0xff
                )),
                Value::from(8080u32),
                Value::from("grpc"),
                Value::from("1.0.0"),
                Value::from(100u32),
                Value::from(format!("{n:032x}")),
            ]);
            checks.extend([Value::from(&id), Value::from(5u32)]);
            for k in 0..metadata {
                meta.extend([
                    Value::from(&id),
                    Value::from(format!("k{k}")),
                    Value::from(format!("value-{n:08}-{k}")),
                ]);
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
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = mysql_async::Pool::new(args.url.as_str());
        let mut conn = pool.get_conn().await.unwrap();
        for table in ["instance_metadata", "health_check", "instance"] {
            conn.query_drop(format!("DELETE FROM {table}")).await.unwrap();
        }
        drop(conn);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..args.connections {
            let ids: Vec<usize> = (c..args.count).step_by(args.connections).collect();
            tasks.spawn(write_share(pool.clone(), ids, args.batch, args.metadata));
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().expect("write");
        }
        let elapsed = started.elapsed();
        println!(
            "direct writer: {} instances in {:.3} s = {:.1} instances/s ({} per transaction, {} connections, {} metadata)",
            args.count,
            elapsed.as_secs_f64(),
            args.count as f64 / elapsed.as_secs_f64(),
            args.batch,
            args.connections,
            args.metadata
        );
        pool.disconnect().await.unwrap();
    });
}
