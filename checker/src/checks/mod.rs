//! Every kind of verify step, registered once in `steps!` below: its name in
//! course.yaml, its parameter struct and the module that runs it. A new
//! kind of probe is a new module and one line here; a new lesson is only
//! course.yaml.

use std::net::TcpListener;

use anyhow::Result;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use crate::course::Lesson;
use crate::report::{StepOutcome, Transcript};
use crate::server::{Launch, ListenWait, Server};

/// How long a failing step waits for a dying server to be reaped before it
/// quotes the evidence (a live server costs the failure this much, once).
const DEATH_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

mod backpressure;
mod bad_input;
mod broadcast;
mod broadcast_process;
mod broken_pipes;
mod build;
mod burst;
mod c10k;
mod capacity;
pub mod causes;
mod client;
mod concurrency;
mod connect_burst;
mod disconnects;
mod echo;
mod epoll;
mod excerpt;
mod fd_exhaustion;
mod fd_leak;
mod frame_client;
mod frames;
mod hold;
mod http;
mod http_load;
mod http_process;
mod idle_cpu;
mod idle_timeout;
mod loops;
mod oversize;
mod perf;
mod pool;
mod process;
mod shutdown;
mod slow_reader;
mod stalled_client;
mod start;
mod stats;
mod stress;
mod unit_tests;
mod watch;

/// One kind of step: parameters from course.yaml, and how to run them.
pub trait Check {
    /// One line saying what the step will do, printed as it starts.
    fn summary(&self) -> String;
    /// `Err` means the checker itself broke (exit 2); a failing student
    /// server is an `Ok` outcome with status Fail.
    fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome>;
    /// Whether the step asks the server to exit (a signal), so an exit in
    /// it is the step's own business, not a death; a panic still is one.
    fn ends_the_server(&self) -> bool {
        false
    }
}

/// Declares the step kinds: `yaml name => Variant(params type)`.
macro_rules! steps {
    ($($name:literal => $variant:ident($params:ty)),+ $(,)?) => {
        /// What a step does, with its parameters.
        #[derive(Debug, Clone)]
        pub enum StepKind { $($variant($params)),+ }

        const STEP_NAMES: &[&str] = &[$($name),+];

        impl StepKind {
            pub fn name(&self) -> &'static str {
                match self { $(StepKind::$variant(_) => $name),+ }
            }
            fn check(&self) -> &dyn Check {
                match self { $(StepKind::$variant(params) => params),+ }
            }
            /// The kind named `name`, its parameters read from `params`.
            fn read<'de, D: Deserializer<'de>>(name: &str, params: D) -> Result<StepKind, D::Error> {
                match name {
                    $($name => <$params>::deserialize(params).map(StepKind::$variant),)+
                    other => Err(de::Error::unknown_variant(other, STEP_NAMES)),
                }
            }
        }
    };
}

/// One verify step of a lesson: its kind and parameters, and the lesson
/// hints (numbered from 1) that a failure of this step points at.
#[derive(Debug, Clone)]
pub struct Step {
    pub kind: StepKind,
    pub hints: Vec<usize>,
}

/// A step is written `- build` (all parameters defaulted),
/// `- stress: {clients: 50, frames: 100}`, or with the hints that apply when
/// it fails on a key beside its name: `- {stress: {clients: 50}, hint: 3}`
/// (`hint: [1, 3]` for several).
impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl<'de> Visitor<'de> for StepVisitor {
            type Value = Step;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(
                    f,
                    "a step name ({}) or a map `name: {{params}}` with an optional `hint: N`",
                    STEP_NAMES.join(", ")
                )
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Step, E> {
                let no_params =
                    de::value::MapDeserializer::<_, E>::new(std::iter::empty::<(String, String)>());
                Ok(Step {
                    kind: StepKind::read(name, no_params)?,
                    hints: Vec::new(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Step, A::Error> {
                let mut kind = None;
                let mut hints = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "hint" {
                        hints = map.next_value::<HintRefs>()?.into_vec();
                    } else if kind.is_some() {
                        return Err(de::Error::custom(
                            "a step has one name (plus an optional `hint`)",
                        ));
                    } else {
                        kind = Some(map.next_value_seed(KindSeed(&key))?);
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::custom("a step needs a name"))?;
                Ok(Step { kind, hints })
            }
        }
        deserializer.deserialize_any(StepVisitor)
    }
}

/// Reads a step's parameters knowing its name, so a typo inside them keeps
/// its full path (`verify[1].stress.clientz`) in the error.
struct KindSeed<'a>(&'a str);

impl<'de> de::DeserializeSeed<'de> for KindSeed<'_> {
    type Value = StepKind;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<StepKind, D::Error> {
        StepKind::read(self.0, deserializer)
    }
}

/// `hint: 3` or `hint: [1, 3]`.
#[derive(serde::Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum HintRefs {
    One(usize),
    Several(Vec<usize>),
}

impl HintRefs {
    pub fn into_vec(self) -> Vec<usize> {
        match self {
            HintRefs::One(n) => vec![n],
            HintRefs::Several(list) => list,
        }
    }
}

steps! {
    "build" => Build(build::Build),
    "start" => Start(start::Start),
    "echo" => Echo(echo::Echo),
    "stress" => Stress(stress::Stress),
    "frames" => Frames(frames::Frames),
    "oversize" => Oversize(oversize::Oversize),
    "concurrency" => Concurrency(concurrency::Concurrency),
    "pool" => Pool(pool::Pool),
    "process" => Process(process::Process),
    "hold" => Hold(hold::Hold),
    "stalled_client" => StalledClient(stalled_client::StalledClient),
    "idle_cpu" => IdleCpu(idle_cpu::IdleCpu),
    "slow_reader" => SlowReader(slow_reader::SlowReader),
    "epoll" => Epoll(epoll::Epoll),
    "burst" => Burst(burst::Burst),
    "connect_burst" => ConnectBurst(connect_burst::ConnectBurst),
    "c10k" => C10k(c10k::C10k),
    "stats" => Stats(stats::Stats),
    "shutdown" => Shutdown(shutdown::Shutdown),
    "backpressure" => Backpressure(backpressure::Backpressure),
    "bad_input" => BadInput(bad_input::BadInput),
    "idle_timeout" => IdleTimeout(idle_timeout::IdleTimeout),
    "client" => Client(client::Client),
    "disconnects" => Disconnects(disconnects::Disconnects),
    "fd_leak" => FdLeak(fd_leak::FdLeak),
    "fd_exhaustion" => FdExhaustion(fd_exhaustion::FdExhaustion),
    "capacity" => Capacity(capacity::Capacity),
    "broken_pipes" => BrokenPipes(broken_pipes::BrokenPipes),
    "perf" => Perf(perf::Perf),
    "loops" => Loops(loops::Loops),
    "http" => Http(http::Http),
    "http_load" => HttpLoad(http_load::HttpLoad),
    "http_process" => HttpProcess(http_process::HttpProcess),
    "http_idle_cpu" => HttpIdleCpu(http_process::HttpIdleCpu),
    "broadcast" => Broadcast(broadcast::Broadcast),
    "broadcast_process" => BroadcastProcess(broadcast_process::BroadcastProcess),
    "broadcast_idle_cpu" => BroadcastIdleCpu(broadcast_process::BroadcastIdleCpu),
    "unit_tests" => UnitTests(unit_tests::UnitTests),
}

impl Step {
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
    pub fn summary(&self) -> String {
        self.kind.check().summary()
    }
    pub fn run(&self, ctx: &mut Ctx) -> Result<StepOutcome> {
        self.kind.check().run(ctx)
    }
    pub fn ends_the_server(&self) -> bool {
        self.kind.check().ends_the_server()
    }
}

/// What is being checked.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A crate to build with cargo.
    Crate { dir: std::path::PathBuf },
    /// A ready command (`--exec`), in any language.
    Exec { argv: Vec<String> },
}

/// Everything a step needs: the lesson, the subject, the seed, the transcript.
pub struct Ctx<'a> {
    /// The whole course (a step may need another crate of it, e.g. `perf`
    /// measures the lesson's reference solution beside the checked server).
    pub course: &'a crate::course::Course,
    pub lesson: &'a Lesson,
    pub subject: Subject,
    /// The built binary, once the build step has run.
    pub binary: Option<std::path::PathBuf>,
    /// This step's seed: derived from the run's seed and the step's index.
    pub seed: u64,
    pub log: &'a mut Transcript,
}

/// How a lesson's event loop waits and asks for writability, so a likely
/// cause speaks the API the student is using.
pub struct Readiness {
    pub wait: &'static str,
    pub writable: &'static str,
}

impl Ctx<'_> {
    /// epoll's words in the lessons that check for epoll, poll's before.
    pub fn readiness(&self) -> Readiness {
        let uses_epoll = self
            .lesson
            .verify
            .iter()
            .any(|step| matches!(step.kind, StepKind::Epoll(_) | StepKind::Loops(_)));
        if uses_epoll {
            Readiness {
                wait: "epoll_wait()",
                writable: "EPOLLOUT",
            }
        } else {
            Readiness {
                wait: "poll()",
                writable: "POLLOUT",
            }
        }
    }

    /// Starts the server with the lesson's flags plus `extra`, and waits until
    /// it listens. `Ok(Err(outcome))` is a server that did not come up.
    pub fn start_server(
        &mut self,
        extra: &[String],
    ) -> Result<std::result::Result<Server, StepOutcome>> {
        let launch = self.launch(extra)?;
        self.start_launch(launch)
    }

    /// Like [`Ctx::start_server`], with the server's soft RLIMIT_NOFILE set
    /// to `nofile_soft` (the C10K lesson starts it at 1,024, a common default).
    pub fn start_server_with_nofile(
        &mut self,
        extra: &[String],
        nofile_soft: u64,
    ) -> Result<std::result::Result<Server, StepOutcome>> {
        let mut launch = self.launch(extra)?;
        launch.nofile_soft = Some(nofile_soft);
        self.start_launch(launch)
    }

    fn start_launch(&mut self, launch: Launch) -> Result<std::result::Result<Server, StepOutcome>> {
        self.log
            .detail(format!("starting: {}", shown_command(&launch.argv)));
        match Server::start(&launch)? {
            Ok(server) => {
                self.log.detail(format!(
                    "server pid {} listening on {}",
                    server.pid, server.addr
                ));
                Ok(Ok(server))
            }
            Err(failure) => Ok(Err(StepOutcome::fail(failure.message)
                .cause(failure.cause)
                .evidence(failure.output))),
        }
    }

    fn launch(&self, extra: &[String]) -> Result<Launch> {
        let mut args: Vec<String> = self.lesson.server_args.clone();
        args.extend(extra.iter().cloned());
        let (argv, wait) = match &self.subject {
            Subject::Crate { .. } => {
                let binary = self.binary.as_ref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "course.yaml: lesson {}: a server step runs before `build`",
                        self.lesson.id
                    )
                })?;
                let mut argv = vec![binary.display().to_string(), "--port".into(), "0".into()];
                argv.extend(args);
                (argv, ListenWait::ListeningLine)
            }
            Subject::Exec { argv: template } => expand_exec(template, &args)?,
        };
        Ok(Launch {
            argv,
            wait,
            nofile_soft: None,
            nofile_hard: None,
        })
    }

    /// A quoted tail of the server's output, and a note of its death if it
    /// died. A server that crashed is often still being reaped when its
    /// clients see the reset, so a failure gives it a moment to be seen dead:
    /// the verdict then names the exit, whichever side noticed first.
    pub fn server_evidence(server: &mut Server) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(death) = server.death_notice_within(DEATH_GRACE) {
            lines.push(death);
        }
        lines.extend(server.output_tail(20));
        lines
    }
}

/// `--exec` templates: `{port}` becomes a free port the checker picked (then
/// it waits until that port accepts); `{args}` becomes the lesson's flags.
/// Without `{port}`, `--port 0` and the flags are appended and the
/// `listening on` line is read as for a crate.
fn expand_exec(template: &[String], args: &[String]) -> Result<(Vec<String>, ListenWait)> {
    let uses_port = template.iter().any(|w| w.contains("{port}"));
    let port = if uses_port { free_port()? } else { 0 };
    let mut argv = Vec::new();
    let mut placed_args = false;
    for word in template {
        if word == "{args}" {
            argv.extend(args.iter().cloned());
            placed_args = true;
        } else {
            if word.contains("{args}") {
                placed_args = true;
            }
            argv.push(
                word.replace("{port}", &port.to_string())
                    .replace("{args}", &args.join(" ")),
            );
        }
    }
    if uses_port {
        Ok((argv, ListenWait::Port(port)))
    } else {
        argv.extend(["--port".to_string(), "0".to_string()]);
        if !placed_args {
            argv.extend(args.iter().cloned());
        }
        Ok((argv, ListenWait::ListeningLine))
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn shown_command(argv: &[String]) -> String {
    shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn every_step_kind_is_documented_in_the_maintainers_guide() {
        let guide = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/maintainers.md"
        ))
        .unwrap();
        let missing: Vec<&&str> = STEP_NAMES
            .iter()
            .filter(|name| !guide.contains(&format!("| `{name}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/maintainers.md's step table lacks {missing:?}"
        );
    }

    #[test]
    fn exec_with_port_placeholder_gets_a_real_port_and_the_args() {
        let (argv, wait) =
            expand_exec(&words("srv -p {port} {args}"), &words("--max-clients 100")).unwrap();
        let ListenWait::Port(port) = wait else {
            panic!("expected a port wait")
        };
        assert_eq!(argv, words(&format!("srv -p {port} --max-clients 100")));
    }

    #[test]
    fn exec_without_port_placeholder_appends_port_zero_and_args() {
        let (argv, wait) =
            expand_exec(&words("python3 server.py"), &words("--max-clients 100")).unwrap();
        assert!(matches!(wait, ListenWait::ListeningLine));
        assert_eq!(argv, words("python3 server.py --port 0 --max-clients 100"));
    }
}
