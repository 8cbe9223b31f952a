//! run: the agent's flow, phase by phase: `booted` → `drivers` → `network` → `config` →
//! `disks`. Each phase is said on the console and reported as an event with its timing
//! (`seconds`) and the console lines it produced (`logs`); the phases before the network is up
//! are queued and sent once it is. A fatal error ends the flow with a message (and a `failed`
//! event when the server can be reached); what happens to the machine then is the caller's
//! business ([`super::init::end`] in PID 1, nothing in tests).
//!
//! On the machine (PID 1) the inventory is followed by the install itself ([`super::install`]:
//! `disk` → `download` → `image` → `partition` → `configdrive` → `bootloader` → `done`), and
//! the caller reboots into the installed system. Not as PID 1 (tests) the flow stops after the
//! inventory and leaves the disks alone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use byol_spec::request::redact_url;
use byol_spec::{AgentConfig, AgentEvent, EventStatus, FailureAction, Phase};

use super::client::{Client, ClientError, Retry};
use super::cmdline::{BootParams, Cmdline, Platform};
use super::console::{say, uptime};
use super::disks;
use super::init;
use super::install::{self, Boot, Events, Firmware};
use super::modules::{self, Loader, ModuleIndex};
use super::net::{self, NetOptions};
use super::step::Step;

/// The final message when the flow ran without installing (not PID 1).
pub const IDLE_MESSAGE: &str = "not PID 1: nothing was installed";
/// The final event's message then.
pub const NOT_YET_MESSAGE: &str = "install skipped (not PID 1): the disks are left as they are";

/// Modules loaded by name whatever the hardware (when the initramfs carries them):
/// AF_PACKET for DHCP, the filesystems the install mounts (their checksum helpers come as
/// soft dependencies); and [`byol_spec::modules::SOFTWARE_RAID`].
pub const BY_NAME: &[&str] = &[
    "af_packet",
    "ext4",
    "xfs",
    "btrfs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "nls_utf8",
];

/// How the flow runs. [`RunOptions::pid1`] is the machine; tests leave the machine alone
/// (`machine: false`) and point `sysfs` at a fake tree.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The kernel command line.
    pub cmdline: String,
    /// sysfs root (`/sys`).
    pub sysfs: PathBuf,
    /// Load modules and configure the network (PID 1). When false, both phases report that
    /// they left things as they are, and the host's network is used.
    pub machine: bool,
    /// Where the module index is (`/lib/modules/<kver>`); None = the running kernel's.
    pub modules_dir: Option<PathBuf>,
    pub net: NetOptions,
    pub retry: Retry,
    /// The disk list must stay the same this long before it is reported (bounded by 10 s).
    pub disk_settle: Duration,
}

impl RunOptions {
    /// The options of the real thing.
    pub fn pid1(cmdline: String) -> RunOptions {
        RunOptions {
            cmdline,
            sysfs: PathBuf::from("/sys"),
            machine: true,
            modules_dir: None,
            net: NetOptions::default(),
            retry: Retry::default(),
            disk_settle: Duration::from_secs(1),
        }
    }
}

/// How the flow ended; the caller does `action`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The install is done: the caller reboots into the installed system.
    Installed { message: String },
    /// The flow ran without installing (not PID 1).
    Idle {
        action: FailureAction,
        message: String,
    },
    /// A fatal error, already shown and reported where possible.
    Failed {
        action: FailureAction,
        phase: String,
        message: String,
    },
}

/// One phase being timed.
/// Sends events, or queues them until the network is up. When the server answers that the
/// install is over for this boot (cancelled, failed, taken over), it raises [`Reporter::stop`].
struct Reporter {
    queued: Vec<AgentEvent>,
    client: Option<Client>,
    online: bool,
    stop: crate::stop::Stop,
}

impl Events for Reporter {
    fn send(&mut self, e: AgentEvent) {
        Reporter::send(self, e);
    }
    fn stop(&self) -> crate::stop::Stop {
        self.stop.clone()
    }
}

impl Reporter {
    fn send(&mut self, e: AgentEvent) {
        self.queued.push(e);
        let Some(c) = self.client.as_mut().filter(|_| self.online) else {
            return;
        };
        for q in self.queued.drain(..) {
            c.queue(q);
        }
        match c.flush() {
            Ok(_) => {}
            Err(ClientError::Stopped { state, message }) => {
                if self.stop.reason().is_none() {
                    say(format!("the server says stop ({state}): {message}"));
                }
                self.stop.stop(message);
            }
            Err(err) => say(format!(
                "could not send events ({} kept for later): {err}",
                c.pending()
            )),
        }
    }
}

/// What the machine does when the server stopped the install: power off soon.
pub const STOPPED_ACTION: FailureAction = FailureAction::Poweroff { seconds: 30 };

/// The whole flow.
pub fn run(o: &RunOptions) -> Outcome {
    let boot_time = uptime();
    init::set_failure_action(FailureAction::default());
    let cmd = Cmdline::parse(&o.cmdline);
    let p = BootParams::from_cmdline(&cmd);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem = init::mem_total_kib()
        .map(|k| byol_spec::text::human(k * 1024))
        .unwrap_or_else(|| "? MiB".into());
    let platform = match p.platform {
        Platform::Unknown if o.machine && init::booted_efi() => Platform::Efi,
        Platform::Unknown if o.machine => Platform::Pcbios,
        x => x,
    };
    let mut rep = Reporter {
        queued: Vec::new(),
        client: None,
        online: false,
        stop: crate::stop::Stop::new(),
    };
    let fail = |rep: &mut Reporter, step: &Step, message: String, report: bool| {
        say(format!("FATAL in {}: {message}", step.phase));
        if report {
            rep.send(step.event(EventStatus::Failed, message.clone()));
        }
        Outcome::Failed {
            action: init::failure_action(),
            phase: step.phase.to_string(),
            message,
        }
    };

    // booted: what the machine is, and that the command line makes sense.
    let ph = Step::since(Phase::Booted, Instant::now());
    say(format!(
        "byol-agent {} up {boot_time:.3} s after kernel start: kernel {kernel}, {} \
         firmware, {mem} RAM, install {}",
        env!("CARGO_PKG_VERSION"),
        platform.as_str(),
        if p.install.is_empty() {
            "?"
        } else {
            &p.install
        }
    ));
    for w in &p.warnings {
        say(format!("warning: {w}"));
    }
    let client = match Client::new(&p.server, &p.token) {
        Ok(c) => c,
        Err(e) => return fail(&mut rep, &ph, e.to_string(), false),
    };
    say(format!("server: {}", client.server()));
    rep.client = Some(client);
    let mut e = ph.event(
        EventStatus::Ok,
        format!(
            "byol-agent {} on kernel {kernel}, {} firmware, {mem} RAM",
            env!("CARGO_PKG_VERSION"),
            platform.as_str()
        ),
    );
    e.seconds = Some((boot_time * 1000.0).round() / 1000.0);
    rep.send(e);

    // drivers
    let ph = Step::start(Phase::Drivers);
    let msg = if o.machine {
        load_drivers(o, &kernel, platform)
    } else {
        "left as they are (not PID 1)".to_string()
    };
    say(&msg);
    rep.send(ph.event(EventStatus::Ok, msg));
    // an RNG driver (virtio-rng, a TPM's) seeds the kernel's RNG a moment after it loads
    if o.machine && !wait_crng(Duration::from_secs(3)) {
        say(
            "warning: the kernel's random number generator is not seeded yet (no RDRAND or \
             virtio-rng?): https may wait for it",
        );
    }

    // network
    let ph = Step::start(Phase::Network);
    let mut booted_net = None;
    let msg = if o.machine {
        match net::bring_up(&p, &o.net) {
            Ok(n) => {
                let s = n.summary();
                booted_net = Some(n);
                s
            }
            Err(e) => return fail(&mut rep, &ph, e, false),
        }
    } else {
        "used as it is (not PID 1)".to_string()
    };
    say(format!("network: {msg}"));
    rep.online = true;
    {
        let (server, token) = (p.server.clone(), p.token.clone());
        init::set_fatal_reporter(move |m| {
            if let Ok(mut c) = Client::new(&server, &token) {
                let _ = c.post(AgentEvent::new(
                    Phase::Agent,
                    EventStatus::Failed,
                    m.to_string(),
                ));
            }
        });
    }
    rep.send(ph.event(EventStatus::Ok, msg));

    // config
    let ph = Step::start(Phase::Config);
    let server = p.server.clone();
    say(format!("fetching the install config from {server}"));
    let fetched = match rep.client.as_ref() {
        Some(c) => c.fetch_config(&o.retry),
        None => Err(ClientError::NoServer),
    };
    let cfg: AgentConfig = match fetched {
        Ok(c) => c,
        Err(e) => {
            let answered = e.server_answered();
            return fail(&mut rep, &ph, e.to_string(), answered);
        }
    };
    init::set_failure_action(cfg.on_failure);
    if !p.install.is_empty() && p.install != cfg.install_id {
        say(format!(
            "warning: byol.install is {} but the server's config is for install {}",
            p.install, cfg.install_id
        ));
    }
    if let Some(m) = p.mac
        && !cfg.macs.is_empty()
        && !cfg
            .macs
            .iter()
            .any(|x| x.eq_ignore_ascii_case(&m.to_string()))
    {
        say(format!(
            "warning: this machine booted from {m}, which is not among the MACs the server \
             knows for {} ({})",
            cfg.machine,
            cfg.macs.join(", ")
        ));
    }
    let msg = format!(
        "install {} for machine {}: {} image {}, config fetched {:.3} s after kernel start",
        cfg.install_id,
        cfg.machine,
        cfg.install.image_type.as_str(),
        redact_url(&cfg.install.image_url),
        uptime()
    );
    say(&msg);
    rep.send(ph.event(EventStatus::Ok, msg));

    // disks
    let ph = Step::start(Phase::Disks);
    let found = disks::wait_stable(&o.sysfs, o.disk_settle, Duration::from_secs(10));
    for d in &found {
        say(d.line());
    }
    let mut msg = disks::summary(&found);
    // the groups of identical disks, as OVH's diskGroups: what a layout is laid on
    let groups = super::install::choose::groups(&found);
    if !groups.is_empty() {
        let lines: Vec<String> = groups.iter().map(|g| g.line()).collect();
        msg.push_str(&format!("; disk groups: {}", lines.join("; ")));
    }
    say(&msg);
    let inventory = byol_spec::Inventory {
        boot_mode: if platform == Platform::Efi {
            "uefi"
        } else {
            "legacy"
        }
        .into(),
        disk_groups: groups
            .iter()
            .map(|g| byol_spec::InventoryGroup {
                disk_group_id: g.number,
                number_of_disks: g.disks.len() as u32,
                disk_size_bytes: g.size_bytes,
                disk_type: match g.disks.first() {
                    _ if g.transport == "nvme" => "NVME",
                    Some(d) if d.rotational => "HDD",
                    _ => "SSD",
                }
                .into(),
                transport: g.transport.clone(),
            })
            .collect(),
    };
    rep.send(byol_spec::AgentEvent {
        inventory: Some(inventory),
        ..ph.event(EventStatus::Ok, msg)
    });

    let peak = || {
        init::peak_rss_kib()
            .map(|k| format!("agent peak RSS (VmHWM): {k} KiB"))
            .unwrap_or_else(|| "agent peak RSS: unknown".into())
    };
    let outcome = if o.machine {
        let boot = Boot {
            firmware: if platform == Platform::Efi {
                Firmware::Uefi
            } else {
                Firmware::Bios
            },
            net: booted_net,
        };
        let result = install::run(&cfg, &boot, &found, &mut rep);
        say(peak());
        match result {
            Ok(done) => Outcome::Installed {
                message: done.message,
            },
            Err(e) => {
                let ph = Step::since(e.phase, Instant::now());
                let stopped = rep.stop.reason().is_some();
                let out = fail(&mut rep, &ph, e.message, true);
                match out {
                    Outcome::Failed { phase, message, .. } if stopped => {
                        say(
                            "the install was stopped by the server: the disk is left unbootable; powering off",
                        );
                        Outcome::Failed {
                            action: STOPPED_ACTION,
                            phase,
                            message,
                        }
                    }
                    o => o,
                }
            }
        }
    } else {
        say(peak());
        say(NOT_YET_MESSAGE);
        rep.send(ph.event(EventStatus::Ok, NOT_YET_MESSAGE.to_string()));
        Outcome::Idle {
            action: cfg.on_failure,
            message: IDLE_MESSAGE.to_string(),
        }
    };
    if let Some(c) = rep.client.as_mut() {
        if matches!(outcome, Outcome::Installed { .. }) {
            // no reboot before the server knows: else the next boot installs again
            match c.flush_until_acknowledged(Duration::from_secs(1), Duration::from_secs(30)) {
                Ok(_) => say("the server has acknowledged the install"),
                Err(e) => say(format!(
                    "warning: the server refused the last report ({e}); the disk is installed \
                     and records it on config-2"
                )),
            }
        } else {
            for _ in 0..3 {
                if c.pending() == 0 || c.flush().is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    outcome
}

/// Whether the kernel's RNG is seeded, waiting up to `max` for it.
fn wait_crng(max: Duration) -> bool {
    let t0 = Instant::now();
    while !init::crng_ready() {
        if t0.elapsed() >= max {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// The drivers phase on a machine: modules for the hardware, then by name, then efivarfs.
fn load_drivers(o: &RunOptions, kernel: &str, platform: Platform) -> String {
    let dir = o
        .modules_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/lib/modules").join(kernel));
    let idx = match ModuleIndex::load(&dir) {
        Ok(i) => i,
        Err(e) => {
            say(format!("no module index ({e}): built-in drivers only"));
            ModuleIndex::default()
        }
    };
    let mut l = Loader::new(&idx, modules::finit);
    let sysfs = o.sysfs.clone();
    l.load_for_hardware(|| modules::scan_modaliases(&sysfs));
    let mut names: Vec<&str> = BY_NAME.to_vec();
    names.extend(byol_spec::modules::SOFTWARE_RAID);
    if platform == Platform::Efi {
        names.push("efivarfs");
    }
    l.load_by_name(&names);
    for (m, e) in &l.report.failed {
        say(format!("module {m} did not load: {e}"));
    }
    for (m, e) in &l.report.soft_failed {
        say(format!("optional module {m} did not load: {e} (fine)"));
    }
    if !l.report.not_carried.is_empty() {
        say(format!(
            "not in this initramfs (built in, or not needed): {}",
            l.report.not_carried.join(", ")
        ));
    }
    match init::mount_efivarfs() {
        Ok(true) => say("efivarfs mounted on /sys/firmware/efi/efivars"),
        Ok(false) => {}
        Err(e) => say(e),
    }
    l.report.summary()
}
