//! A fresh PostgreSQL database per test, dropped when the test ends.

/// `base` (a PostgreSQL URL) with its database name replaced by `name`.
pub fn database_url_named(base: &str, name: &str) -> String {
    let (main, query) = base
        .split_once('?')
        .map_or((base, None), |(m, q)| (m, Some(q)));
    let cut = main
        .rfind('/')
        .filter(|&i| i > "postgres://".len())
        .unwrap_or(main.len());
    match query {
        Some(q) => format!("{}/{name}?{q}", &main[..cut]),
        None => format!("{}/{name}", &main[..cut]),
    }
}

async fn execute(url: &str, sql: &str) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let task = tokio::spawn(conn);
    let result = client.batch_execute(sql).await.map_err(|e| e.to_string());
    drop(client);
    let _ = task.await;
    result
}

/// A database created in the server named by `DATABASE_URL` (which `cargo
/// xtask test` provisions), named `<prefix>_<random>`, and dropped — with
/// every connection still open to it — when this value is dropped, so that no
/// test leaves a database behind on a shared server.
#[derive(Debug)]
pub struct TestDatabase {
    base: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates the database. Panics with the fix when `DATABASE_URL` is unset.
    pub async fn create(prefix: &str) -> Self {
        let base = std::env::var("DATABASE_URL").expect(
            "DATABASE_URL is not set: run the tests with `cargo xtask test` (it provisions PostgreSQL)",
        );
        Self::create_in(&base, prefix)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates the database in the server of `base`.
    pub async fn create_in(base: &str, prefix: &str) -> Result<Self, String> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        execute(base, &format!("CREATE DATABASE {name}")).await?;
        // Labelled with its maker (CREATE DATABASE takes no comment, nor a
        // transaction to share with one): a killed run's leftovers are
        // recognised by the next run.
        let owner = crate::owner_comment().replace('\'', "");
        execute(base, &format!("COMMENT ON DATABASE {name} IS '{owner}'")).await?;
        Ok(Self {
            url: database_url_named(base, &name),
            base: base.to_owned(),
            name,
        })
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `host:port` of its server.
    pub fn host_port(&self) -> &str {
        let after = self.url.split_once('@').map_or(&self.url[..], |(_, h)| h);
        let after = after.strip_prefix("postgres://").unwrap_or(after);
        after.split('/').next().unwrap_or(after)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (base, sql) = (
            self.base.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        // Drop may run inside a runtime (where blocking on one is refused)
        // or outside any: a thread of its own works in both.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(execute(&base, &sql))
        })
        .join();
        if let Ok(Err(e)) | Err(e) = dropped.map_err(|_| "panicked".to_string()) {
            eprintln!("warning: test database {} not dropped: {e}", self.name);
        }
    }
}
