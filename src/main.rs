//! The `dragoman` binary: Pingora's command line (`-c FILE`, `-t`, `-d`, `-u`), one YAML file for
//! both Pingora and the gateway, the proxy service and the admin service.

use arc_swap::ArcSwap;
use dragoman::admin::reload::{ReloadOnHangup, Reloader};
use dragoman::admin::AdminApp;
use dragoman::config::{self, Settings};
use dragoman::drain::{self, DrainService};
use dragoman::proxy::edge::EdgeApp;
use dragoman::proxy::Gateway;
use dragoman::registry::Registry;
use dragoman::tls::CertificateReloader;
use dragoman::upstream::upkeep::Upkeep;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

// glibc's malloc serialises worker threads on its arena locks under load; jemalloc does not
// (and is what Pingora's own examples use).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // SIGHUP reloads the configuration (`admin::reload::ReloadOnHangup`), but Pingora does not
    // handle it and its default action ends the process. Ignored from here until that service
    // takes it over; the disposition, unlike a handler thread, survives `-d`'s fork.
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let opt = Opt::parse_args();
    match run(opt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dragoman: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Pingora binds the listeners inside their services: an address in use is retried there for
/// some seconds, then the service panics while the process runs on, serving nothing on it.
/// Binding each address once here first makes that an error at start that names the key. Not
/// with `-u`, whose sockets come from the running instance that still holds them, nor with `-t`,
/// which runs while that instance holds them too.
fn check_addresses_free(settings: &Settings) -> Result<(), String> {
    let addresses = settings
        .listen
        .iter()
        .map(|a| ("listen", a))
        .chain(settings.admin_listen.iter().map(|a| ("admin_listen", a)));
    for (key, addr) in addresses {
        // std sets SO_REUSEADDR as Pingora does, so a port only in TIME_WAIT is not refused.
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?;
    }
    Ok(())
}

fn run(opt: Opt) -> Result<(), String> {
    let env = |name: &str| std::env::var(name).ok();
    let (settings, mut server_conf, text) = match &opt.conf {
        Some(path) => {
            let settings = Settings::load(Path::new(path)).map_err(|e| format!("{path}: {e}"))?;
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            // Only Pingora's own keys go to Pingora, whose errors quote the text they were given:
            // a type error there must not print the gateway's keys.
            let pingora = config::pingora_section(&text).map_err(|e| format!("{path}: {e}"))?;
            let conf = ServerConf::from_yaml(&pingora).map_err(|e| {
                let why = e.root_cause().to_string();
                format!("{path}: a Pingora setting is invalid: {why}")
            })?;
            drain::check_grace(&conf).map_err(|e| format!("{path}: {e}"))?;
            (settings, conf, text)
        }
        None => (
            Settings::default_from_env(&env),
            ServerConf::default(),
            String::new(),
        ),
    };
    if opt.test {
        println!("dragoman: configuration is valid");
        return Ok(());
    }
    let uses_default_threads = opt
        .conf
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_none_or(|text| !text.lines().any(|l| l.starts_with("threads:")));
    if uses_default_threads {
        server_conf.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    }
    if settings.models.is_empty() {
        log::warn!(
            "no models configured: set OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY, or pass -c FILE"
        );
    }

    if !opt.upgrade {
        check_addresses_free(&settings)?;
    }
    // Requests in flight get the grace period; Pingora drops what is left a little later, once
    // their terminal events are out (see `dragoman::drain`).
    let grace = drain::grace_period(&server_conf);
    server_conf.grace_period_seconds = Some((grace + drain::FINAL_WRITE).as_secs());

    // With `-u`, the listening sockets are taken over here, before the slower start-up below (key
    // commands, name resolution): the running instance, told by SIGQUIT first (as the systemd
    // unit does), offers them for about 5 s only. Meanwhile the kernel queues new connections.
    let config_path = opt.conf.as_ref().map(std::path::PathBuf::from);
    let mut opt_for_server = opt;
    opt_for_server.conf = None;
    let mut server = Server::new_with_opt_and_conf(opt_for_server, server_conf);
    server.bootstrap();

    // The log's file is opened now, so a bad path stops the start naming the key.
    let access_log = match &settings.access_log {
        Some(a) => Some(dragoman::observe::access_log::start(a)?),
        None => None,
    };
    let registry = Registry::build(&settings);
    // Resolve endpoint names before taking traffic; the load balancers' background services
    // refresh them afterwards, off the request path.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start resolver runtime: {e}"))?
        .block_on(async {
            // A key command that fails its first run stops the start, naming its key.
            registry.prepare(None).await
        })?;
    let registry = Arc::new(ArcSwap::from_pointee(registry));
    let reloader = Arc::new(Reloader::new(
        config_path,
        registry.clone(),
        settings.clone(),
        text,
    ));

    // One service over all the worker threads. One single-threaded service per thread on the same
    // socket did 16-27% more pass-through requests per second on 2 cores, but which thread takes
    // a connection is whoever wins the accept race: a burst of new connections can all land on
    // one thread and stay there (1 run in 6 in BENCHMARKS.md). Work stealing keeps the load even.
    // Pingora's proxy, behind the client-side deadlines and limits (`edge:`).
    dragoman::buffers::BUFFERS.set_limit(settings.edge.max_buffered_bytes);
    let mut gateway =
        pingora_proxy::http_proxy(&server.configuration, Gateway::new(registry.clone()));
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(settings.edge.idle_timeout);
    gateway.server_options = Some(options);
    let edge = EdgeApp::new(gateway, settings.edge);
    let connections = edge.open_connections();
    let mut proxy = Service::new("dragoman".into(), edge);
    let mut reloaders = Vec::new();
    for addr in &settings.listen {
        match settings.tls.get(addr) {
            None => proxy.add_tcp(&addr.to_string()),
            Some(files) => {
                let reloader = Arc::new(
                    CertificateReloader::load(files)
                        .map_err(|e| format!("listen {addr}: tls{}: {e}", e.field()))?,
                );
                let mut tls = reloader
                    .listener_settings()
                    .map_err(|e| format!("listen {addr}: tls: {e}"))?;
                // Pingora's `downstream_tls_offload_*` keys, as its own listeners apply them.
                tls.set_offload_threadpool_from_server_conf(&server.configuration);
                proxy.add_tls_with_settings(&addr.to_string(), None, tls);
                reloaders.push(reloader);
            }
        }
    }
    server.add_service(proxy);
    server.add_service(GenBackgroundService::new(
        "drain".into(),
        Arc::new(DrainService { grace, connections }),
    ));
    for (i, reloader) in reloaders.into_iter().enumerate() {
        server.add_service(GenBackgroundService::new(
            format!("tls certificate reload {i}"),
            reloader,
        ));
    }

    if let Some(admin_addr) = settings.admin_listen {
        let mut admin = Service::new(
            "dragoman admin".into(),
            AdminApp::new(registry.clone(), reloader.clone()),
        );
        admin.add_tcp(&admin_addr.to_string());
        admin.threads = Some(1);
        server.add_service(admin);
    }
    // Every pool's DNS refresh and health checks, and every provider's key renewals, for the
    // registry in force: after a reload, new ones start and those no longer in use stop.
    server.add_service(GenBackgroundService::new(
        "pools and keys".into(),
        Arc::new(Upkeep::new(registry.clone(), reloader.subscribe())),
    ));
    server.add_service(GenBackgroundService::new(
        "reload on SIGHUP".into(),
        Arc::new(ReloadOnHangup(reloader)),
    ));
    if let Some(writer) = access_log {
        server.add_service(GenBackgroundService::new(
            "access log".into(),
            Arc::new(writer),
        ));
    }
    log::info!(
        "dragoman listening on {:?} (admin {:?}) with {} models",
        settings.listen,
        settings.admin_listen,
        settings.models.len()
    );
    server.run_forever()
}
