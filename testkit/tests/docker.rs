//! Static checks of the Docker path: `infra/docker-compose.yml`, the
//! `Dockerfile` and `.dockerignore` against the workspace and `.env.example`.
//!
//! No Docker engine runs where the tests run, so nothing here pulls, builds
//! or starts anything; these read the files and catch what once broke
//! `docker compose up` for everyone without any check noticing: images that
//! float (`latest`, a minor-version tag) or come from a namespace that is
//! gone (MinIO left Docker Hub), healthchecks calling a tool the image no
//! longer ships (curl), and names, ports and binaries that drifted apart.
//! Every problem names the file and line to fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use yaml_rust2::{Yaml, YamlLoader};

const COMPOSE: &str = "infra/docker-compose.yml";
const DOCKERFILE: &str = "Dockerfile";
const DOCKERIGNORE: &str = ".dockerignore";
const ENV_EXAMPLE: &str = ".env.example";

/// Image namespaces that no longer serve images, with where they went.
const GONE_NAMESPACES: &[(&str, &str)] = &[(
    "minio/",
    "MinIO's images are no longer on Docker Hub; use quay.io/minio/minio or quay.io/minio/mc",
)];

/// How each image's tags are versioned: what a pinned tag looks like.
#[derive(Clone, Copy)]
enum Versioning {
    /// Numeric `a.b[.c]` before any `-variant`, with at least this many parts
    /// (PostgreSQL and Debian point releases have two, RabbitMQ and Rust three).
    Numeric(usize),
    /// MinIO's `RELEASE.YYYY-MM-DDTHH-MM-SSZ`.
    MinioRelease,
}

const VERSIONING: &[(&str, Versioning)] = &[
    ("rabbitmq", Versioning::Numeric(3)),
    ("postgres", Versioning::Numeric(2)),
    ("debian", Versioning::Numeric(2)),
    ("rust", Versioning::Numeric(3)),
    ("quay.io/minio/minio", Versioning::MinioRelease),
    ("quay.io/minio/mc", Versioning::MinioRelease),
];

/// The healthcheck commands each image is documented to ship (a command
/// and, where it matters, its first argument). The image built from our
/// Dockerfile is checked against its own binaries instead.
const HEALTHCHECKS: &[(&str, &[&str])] = &[
    // rabbitmq-diagnostics is part of every RabbitMQ installation.
    ("rabbitmq", &["rabbitmq-diagnostics"]),
    // The PostgreSQL image installs the client tools, pg_isready among them.
    ("postgres", &["pg_isready"]),
    // The MinIO server image ships mc (and no curl or wget).
    ("quay.io/minio/minio", &["mc ready"]),
    // The mc image is mc.
    ("quay.io/minio/mc", &["mc stat", "mc ls", "mc ready"]),
];

/// Workspace binaries the image leaves out, and why.
const NOT_SHIPPED: &[(&str, &str)] = &[(
    "bibliomq-bench",
    "the load generator runs beside a stack, not in it",
)];

/// Services meant for `docker compose up --scale <service>=N`.
const SCALED: &[&str] = &["workers"];

/// The variables that make the apps listen on every interface, which they
/// must inside a container.
const LISTEN_HOSTS: &[&str] = &[
    "BIBLIOMQ_API_HOST",
    "BIBLIOMQ_EDGE_HOST",
    "BIBLIOMQ_WORKER_OPS_HOST",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn assert_none(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------- inputs ---

/// The compose file, parsed, with its text for line numbers.
struct Compose {
    file: String,
    text: String,
    doc: Yaml,
}

impl Compose {
    fn parse(file: &str, text: &str) -> Self {
        let mut docs = YamlLoader::load_from_str(text)
            .unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
        assert_eq!(docs.len(), 1, "{file}: expected one YAML document");
        Self {
            file: file.to_owned(),
            text: text.to_owned(),
            doc: docs.remove(0),
        }
    }

    fn services(&self) -> Vec<(String, &Yaml)> {
        self.doc["services"]
            .as_hash()
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `file:line` of the first line containing `needle` within `service`'s
    /// block (or anywhere, without a service); the service's own line when
    /// the needle is not there.
    fn at(&self, service: Option<&str>, needle: &str) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        let (start, end) = match service {
            None => (0, lines.len()),
            Some(name) => {
                let header = format!("  {name}:");
                let start = lines
                    .iter()
                    .position(|l| l.trim_end() == header)
                    .unwrap_or(0);
                let end = lines
                    .iter()
                    .enumerate()
                    .skip(start + 1)
                    .find(|(_, l)| {
                        let indent = l.len() - l.trim_start().len();
                        !l.trim().is_empty() && !l.trim_start().starts_with('#') && indent <= 2
                    })
                    .map_or(lines.len(), |(i, _)| i);
                (start, end)
            }
        };
        let line = (start..end)
            .find(|&i| lines[i].contains(needle))
            .unwrap_or(start);
        format!("{}:{}", self.file, line + 1)
    }
}

/// One Dockerfile instruction, continuation lines joined.
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

struct Dockerfile {
    instructions: Vec<Instruction>,
}

impl Dockerfile {
    fn parse(text: &str) -> Self {
        let mut instructions = Vec::new();
        let mut current: Option<Instruction> = None;
        for (i, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
                continue;
            }
            let (body, continues) = match trimmed.strip_suffix('\\') {
                Some(body) => (body.trim_end(), true),
                None => (trimmed, false),
            };
            match current.as_mut() {
                Some(instruction) => {
                    instruction.args.push(' ');
                    instruction.args.push_str(body);
                }
                None => {
                    let (keyword, args) =
                        body.split_once(char::is_whitespace).unwrap_or((body, ""));
                    current = Some(Instruction {
                        line: i + 1,
                        keyword: keyword.to_ascii_uppercase(),
                        args: args.trim().to_owned(),
                    });
                }
            }
            if !continues {
                instructions.extend(current.take());
            }
        }
        instructions.extend(current);
        Self { instructions }
    }

    fn all(&self, keyword: &str) -> impl Iterator<Item = &Instruction> {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }

    /// `(line, image)` of every `FROM` that names an image, not an earlier stage.
    fn base_images(&self) -> Vec<(usize, String)> {
        let mut stages = BTreeSet::new();
        let mut images = Vec::new();
        for from in self.all("FROM") {
            let words: Vec<&str> = from
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let Some(image) = words.first() else { continue };
            if !stages.contains(&image.to_ascii_lowercase()) {
                images.push((from.line, (*image).to_owned()));
            }
            if words.len() == 3 && words[1].eq_ignore_ascii_case("as") {
                stages.insert(words[2].to_ascii_lowercase());
            }
        }
        images
    }

    /// The binaries the build stage makes: `ARG BINARIES="..."`.
    fn binaries(&self) -> Option<(usize, Vec<String>)> {
        self.all("ARG").find_map(|arg| {
            let value = arg.args.strip_prefix("BINARIES=")?;
            let names = value
                .trim_matches('"')
                .split_whitespace()
                .map(str::to_owned);
            Some((arg.line, names.collect()))
        })
    }

    fn exposed(&self) -> Vec<(usize, u16)> {
        self.all("EXPOSE")
            .flat_map(|e| {
                e.args.split_whitespace().map(move |p| {
                    let port = p.split('/').next().unwrap_or(p);
                    (e.line, port.parse().unwrap_or(0))
                })
            })
            .collect()
    }

    /// `ENV KEY=VALUE ...` of the last stage.
    fn env(&self) -> Vec<(usize, String, String)> {
        let last_from = self.all("FROM").last().map_or(0, |f| f.line);
        self.all("ENV")
            .filter(|e| e.line > last_from)
            .flat_map(|e| {
                e.args.split_whitespace().filter_map(move |pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((e.line, k.to_owned(), v.trim_matches('"').to_owned()))
                })
            })
            .collect()
    }
}

/// `.env.example`: every variable with its default.
fn env_example(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// The `_PORT` defaults of `.env.example`.
fn env_ports(env: &BTreeMap<String, String>) -> BTreeMap<u16, String> {
    env.iter()
        .filter(|(k, _)| k.ends_with("_PORT"))
        .filter_map(|(k, v)| Some((v.parse().ok()?, k.clone())))
        .collect()
}

/// A binary of the workspace: its name and its `main.rs`.
struct Binary {
    name: String,
    main: PathBuf,
}

/// The members' binaries (`[[bin]]` sections, or `src/main.rs` named after
/// the package) and every `rust-version` the workspace declares.
fn workspace() -> (Vec<Binary>, Vec<(String, String)>) {
    let manifest = read("Cargo.toml");
    let mut versions = vec![(
        "Cargo.toml".to_owned(),
        toml_value(&manifest, "rust-version").unwrap_or_default(),
    )];
    let mut binaries = Vec::new();
    for member in members() {
        let rel = format!("{member}/Cargo.toml");
        let text = read(&rel);
        if let Some(v) = toml_value(&text, "rust-version") {
            versions.push((rel.clone(), v));
        }
        let mut package = None;
        let mut bins = Vec::new();
        let mut section = String::new();
        let mut bin: Option<(Option<String>, Option<String>)> = None;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                if let Some((name, path)) = bin.take() {
                    bins.push((name, path));
                }
                section = line.to_owned();
                if section == "[[bin]]" {
                    bin = Some((None, None));
                }
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_owned();
            match (section.as_str(), key.trim()) {
                ("[package]", "name") => package = Some(value),
                ("[[bin]]", "name") => bin.get_or_insert((None, None)).0 = Some(value),
                ("[[bin]]", "path") => bin.get_or_insert((None, None)).1 = Some(value),
                _ => {}
            }
        }
        bins.extend(bin);
        if bins.is_empty() && root().join(&member).join("src/main.rs").exists() {
            bins.push((package.clone(), None));
        }
        for (name, path) in bins {
            binaries.push(Binary {
                name: name.or_else(|| package.clone()).unwrap_or_default(),
                main: root()
                    .join(&member)
                    .join(path.unwrap_or_else(|| "src/main.rs".to_owned())),
            });
        }
    }
    (binaries, versions)
}

/// The workspace's member directories.
fn members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let list = manifest
        .split_once("members")
        .and_then(|(_, rest)| rest.split_once('[')?.1.split_once(']'))
        .map(|(list, _)| list.to_owned())
        .expect("the workspace lists its members");
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

/// A plain `key = "value"` of a TOML file (not `key.workspace = true`).
fn toml_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn numeric_version(v: &str) -> Vec<u64> {
    v.split('.').map_while(|p| p.parse().ok()).collect()
}

// ---------------------------------------------------------------- checks ---

/// An image reference split into repository (without `docker.io/library/`)
/// and tag.
fn split_image(reference: &str) -> (String, Option<String>) {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let (repo, tag) = match without_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_owned())),
        _ => (without_digest, None),
    };
    let repo = repo
        .trim_start_matches("docker.io/")
        .trim_start_matches("index.docker.io/")
        .trim_start_matches("library/");
    (repo.to_owned(), tag)
}

/// Why `reference` is not a pinned image from a registry that serves it.
fn image_problem(reference: &str) -> Option<String> {
    if reference.contains('$') {
        return Some(format!(
            "image {reference} is chosen by a variable; pin it in the file"
        ));
    }
    let (repo, tag) = split_image(reference);
    if let Some((_, why)) = GONE_NAMESPACES.iter().find(|(ns, _)| repo.starts_with(ns)) {
        return Some(format!(
            "image {reference} comes from a namespace that is gone: {why}"
        ));
    }
    let Some(tag) = tag else {
        return Some(format!(
            "image {reference} has no tag (so: latest); pin a version"
        ));
    };
    if tag == "latest" {
        return Some(format!(
            "image {reference} floats with `latest`; pin a version"
        ));
    }
    let Some((_, versioning)) = VERSIONING.iter().find(|(r, _)| *r == repo) else {
        return Some(format!(
            "image {reference}: no versioning rule for {repo}; add how its tags are versioned (and its healthcheck commands) to testkit/tests/docker.rs"
        ));
    };
    match *versioning {
        Versioning::Numeric(parts) => {
            let version = tag.split('-').next().unwrap_or(&tag);
            let numbers = numeric_version(version);
            (numbers.len() != version.split('.').count() || numbers.len() < parts).then(|| {
                format!(
                    "image {reference}: tag {tag} floats (it moves with every release of {version}); pin a full version with {parts} numbers"
                )
            })
        }
        Versioning::MinioRelease => {
            let stamp = tag.strip_prefix("RELEASE.").unwrap_or("");
            let shape_ok = stamp.len() >= 20
                && stamp.char_indices().take(20).all(|(i, c)| match i {
                    4 | 7 | 13 | 16 => c == '-',
                    10 => c == 'T',
                    19 => c == 'Z',
                    _ => c.is_ascii_digit(),
                });
            (!shape_ok).then(|| {
                format!(
                    "image {reference}: tag {tag} is not a MinIO RELEASE.YYYY-MM-DDTHH-MM-SSZ tag"
                )
            })
        }
    }
}

fn is_built(service: &Yaml) -> bool {
    !service["build"].is_badvalue()
}

fn image_problems(compose: &Compose, dockerfile: &Dockerfile) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, service) in compose.services() {
        let image = service["image"].as_str();
        let at = compose.at(Some(&name), "image:");
        match (image, is_built(service)) {
            (None, false) => {
                problems.push(format!("{at}: service {name} has neither image nor build"))
            }
            (None, true) => {}
            // Built here, never pulled: a local tag, but still not `latest`.
            (Some(image), true) => {
                if matches!(split_image(image).1.as_deref(), None | Some("latest")) {
                    problems.push(format!(
                        "{at}: service {name}: built image {image} needs a tag other than latest"
                    ));
                }
            }
            (Some(image), false) => {
                if let Some(why) = image_problem(image) {
                    problems.push(format!("{at}: service {name}: {why}"));
                }
            }
        }
    }
    for (line, image) in dockerfile.base_images() {
        if let Some(why) = image_problem(&image) {
            problems.push(format!("{DOCKERFILE}:{line}: {why}"));
        }
    }
    problems
}

/// The healthcheck's command words (after `CMD`, or the shell line split).
fn healthcheck_words(test: &Yaml) -> Result<Vec<String>, String> {
    let words: Vec<String> = match test {
        Yaml::String(line) => line.split_whitespace().map(str::to_owned).collect(),
        Yaml::Array(items) => {
            let items: Vec<&str> = items.iter().filter_map(Yaml::as_str).collect();
            match items.split_first() {
                Some((&"CMD", rest)) => rest.iter().map(|s| (*s).to_owned()).collect(),
                Some((&"CMD-SHELL", [line])) => {
                    line.split_whitespace().map(str::to_owned).collect()
                }
                Some((&"NONE", _)) => return Ok(Vec::new()),
                _ => {
                    return Err(format!(
                        "healthcheck test {items:?} is not CMD, CMD-SHELL or NONE"
                    ));
                }
            }
        }
        other => {
            return Err(format!(
                "healthcheck test {other:?} is neither a list nor a string"
            ));
        }
    };
    Ok(words)
}

/// Subcommands a binary's `main.rs` declares (clap derive: `Name,` or
/// `Name {` as an enum variant, kebab-cased on the command line).
fn has_subcommand(main: &Path, subcommand: &str) -> bool {
    let Ok(source) = std::fs::read_to_string(main) else {
        return false;
    };
    let variant: String = subcommand
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    source
        .lines()
        .map(str::trim)
        .any(|l| l == format!("{variant},") || l == format!("{variant} {{"))
}

fn healthcheck_problems(
    compose: &Compose,
    dockerfile: &Dockerfile,
    binaries: &[Binary],
) -> Vec<String> {
    let mut problems = Vec::new();
    let shipped: BTreeSet<String> = dockerfile
        .binaries()
        .map(|(_, b)| b.into_iter().collect())
        .unwrap_or_default();
    let services = compose.services();
    for (name, service) in &services {
        let healthcheck = &service["healthcheck"];
        if healthcheck.is_badvalue() {
            continue;
        }
        let at = compose.at(Some(name), "test:");
        let words = match healthcheck_words(&healthcheck["test"]) {
            Ok(words) => words,
            Err(why) => {
                problems.push(format!("{at}: service {name}: {why}"));
                continue;
            }
        };
        let Some(command) = words.first() else {
            continue;
        };
        let starts_with = |allowed: &str| {
            allowed
                .split_whitespace()
                .zip(words.iter().chain(std::iter::repeat(&String::new())))
                .all(|(a, w)| a == w)
        };
        if is_built(service) {
            let main = binaries
                .iter()
                .find(|b| &b.name == command)
                .map(|b| b.main.clone());
            let ok = shipped.contains(command)
                && words.get(1).is_some_and(|w| w == "healthcheck")
                && main.is_some_and(|m| has_subcommand(&m, "healthcheck"));
            if !ok {
                problems.push(format!(
                    "{at}: service {name}: healthcheck `{}` is not `<binary> healthcheck` for a binary the Dockerfile builds with a Healthcheck subcommand",
                    words.join(" ")
                ));
            }
            continue;
        }
        let Some(image) = service["image"].as_str() else {
            continue;
        };
        let (repo, _) = split_image(image);
        // An image that moved registries ships what it shipped before.
        let documented = HEALTHCHECKS
            .iter()
            .find(|(r, _)| *r == repo || r.ends_with(&format!("/{repo}")));
        match documented {
            None => problems.push(format!(
                "{at}: service {name}: no documented healthcheck commands for {repo}; add them to HEALTHCHECKS in testkit/tests/docker.rs"
            )),
            Some((_, allowed)) if !allowed.iter().any(|a| starts_with(a)) => problems.push(format!(
                "{at}: service {name}: healthcheck runs `{command}`, which {repo} is not documented to ship (allowed: {})",
                allowed.join(", ")
            )),
            Some(_) => {}
        }
    }
    // A service others wait for as healthy needs a healthcheck, or compose
    // refuses to start them.
    for (name, service) in &services {
        let Some(depends) = service["depends_on"].as_hash() else {
            continue;
        };
        for (dependency, condition) in depends {
            let Some(dependency) = dependency.as_str() else {
                continue;
            };
            let target = services.iter().find(|(n, _)| n == dependency);
            match target {
                None => problems.push(format!(
                    "{}: service {name} depends on {dependency}, which is not a service",
                    compose.at(Some(name), dependency)
                )),
                Some((_, target))
                    if condition["condition"].as_str() == Some("service_healthy")
                        && target["healthcheck"].is_badvalue() =>
                {
                    problems.push(format!(
                        "{}: service {name} waits for {dependency} to be healthy, but {dependency} has no healthcheck",
                        compose.at(Some(name), dependency)
                    ))
                }
                Some(_) => {}
            }
        }
    }
    problems
}

fn profiles(service: &Yaml) -> BTreeSet<String> {
    service["profiles"]
        .as_vec()
        .map(|p| {
            p.iter()
                .filter_map(Yaml::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `docker compose up --wait` fails on a container that exited, even with
/// 0, unless a service started with it waits for it with
/// `service_completed_successfully`.
fn one_shot_problems(compose: &Compose) -> Vec<String> {
    let services = compose.services();
    let mut problems = Vec::new();
    for (name, service) in &services {
        if service["restart"].as_str() != Some("no") {
            continue;
        }
        let awaited = services.iter().any(|(_, other)| {
            profiles(other) == profiles(service)
                && other["depends_on"][name.as_str()]["condition"].as_str()
                    == Some("service_completed_successfully")
        });
        if !awaited {
            problems.push(format!(
                "{}: service {name} runs once, but no service of the same profiles waits for it with condition service_completed_successfully, so `docker compose up --wait` would fail when it exits",
                compose.at(Some(name), "restart:")
            ));
        }
    }
    problems
}

fn binary_problems(
    dockerfile: &Dockerfile,
    binaries: &[Binary],
    compose: &Compose,
    versions: &[(String, String)],
) -> Vec<String> {
    let mut problems = Vec::new();
    let workspace: BTreeSet<&str> = binaries.iter().map(|b| b.name.as_str()).collect();
    let Some((line, shipped)) = dockerfile.binaries() else {
        return vec![format!(
            "{DOCKERFILE}: no `ARG BINARIES=\"...\"` naming the binaries it builds"
        )];
    };
    for bin in &shipped {
        if !workspace.contains(bin.as_str()) {
            problems.push(format!("{DOCKERFILE}:{line}: builds {bin}, which no workspace member declares (binaries: {workspace:?})"));
        }
    }
    for bin in &workspace {
        if !shipped.iter().any(|s| s == bin) && !NOT_SHIPPED.iter().any(|(n, _)| n == bin) {
            problems.push(format!(
                "{DOCKERFILE}:{line}: the workspace's binary {bin} is not built; add it to BINARIES or to NOT_SHIPPED in testkit/tests/docker.rs with a reason"
            ));
        }
    }
    // Compose runs only binaries the image has, with subcommands they declare.
    for (name, service) in compose.services() {
        if !is_built(service) {
            continue;
        }
        let words: Vec<&str> = service["command"]
            .as_vec()
            .map(|c| c.iter().filter_map(Yaml::as_str).collect())
            .unwrap_or_default();
        let at = compose.at(Some(&name), "command:");
        match words.as_slice() {
            [bin, rest @ ..] => {
                let binary = binaries.iter().find(|b| b.name == *bin);
                if !shipped.iter().any(|s| s == bin) || binary.is_none() {
                    problems.push(format!(
                        "{at}: service {name} runs {bin}, which the Dockerfile does not build"
                    ));
                } else if let (Some(sub), Some(binary)) = (rest.first(), binary)
                    && !sub.starts_with('-')
                    && !has_subcommand(&binary.main, sub)
                {
                    problems.push(format!(
                        "{at}: service {name} runs `{bin} {sub}`, a subcommand {bin} does not declare"
                    ));
                }
            }
            [] => problems.push(format!(
                "{at}: service {name} needs a command as a list naming the binary to run"
            )),
        }
    }
    // The builder's Rust is new enough for every crate.
    if let Some((line, image)) = dockerfile
        .base_images()
        .into_iter()
        .find(|(_, i)| split_image(i).0 == "rust")
    {
        let tag = split_image(&image).1.unwrap_or_default();
        let have = numeric_version(tag.split('-').next().unwrap_or(""));
        for (file, need) in versions {
            if have < numeric_version(need) {
                problems.push(format!("{DOCKERFILE}:{line}: builds with Rust {tag}, older than rust-version {need} in {file}"));
            }
        }
    } else {
        problems.push(format!("{DOCKERFILE}: no stage builds FROM a rust image"));
    }
    // The processes run as someone other than root.
    match dockerfile.all("USER").last() {
        None => problems.push(format!(
            "{DOCKERFILE}: no USER: the processes would run as root"
        )),
        Some(user) => {
            let who = user.args.split(':').next().unwrap_or("");
            let after_last_from = dockerfile
                .all("FROM")
                .last()
                .is_none_or(|f| user.line > f.line);
            if who == "root" || who == "0" || !after_last_from {
                problems.push(format!(
                    "{DOCKERFILE}:{}: the final stage must run as a non-root USER",
                    user.line
                ));
            }
        }
    }
    problems
}

/// An environment map (`KEY: value` or `- KEY=value`) as pairs.
fn environment(service: &Yaml) -> Vec<(String, String)> {
    let scalar = |y: &Yaml| match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        _ => String::new(),
    };
    match &service["environment"] {
        Yaml::Hash(h) => h
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v))))
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .filter_map(Yaml::as_str)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `(host port, container port)` of a `ports` entry (short syntax).
fn port_mapping(entry: &Yaml) -> Option<(Option<u16>, u16)> {
    let text = match entry {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        _ => return None,
    };
    let text = text.split('/').next().unwrap_or(&text);
    let parts: Vec<&str> = text.rsplitn(3, ':').collect();
    let container = parts.first()?.parse().ok()?;
    let host = parts.get(1).and_then(|h| h.parse().ok());
    Some((host, container))
}

fn port_problems(
    compose: &Compose,
    dockerfile: &Dockerfile,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let defaults = env_ports(env);
    let exposed: BTreeMap<u16, usize> = dockerfile
        .exposed()
        .into_iter()
        .map(|(l, p)| (p, l))
        .collect();
    let expose_line = dockerfile.all("EXPOSE").next().map_or(0, |e| e.line);
    for (port, var) in &defaults {
        if !exposed.contains_key(port) {
            problems.push(format!(
                "{DOCKERFILE}:{expose_line}: EXPOSE lacks {port} ({var} in {ENV_EXAMPLE})"
            ));
        }
    }
    for (port, line) in &exposed {
        if !defaults.contains_key(port) {
            problems.push(format!(
                "{DOCKERFILE}:{line}: EXPOSE {port} is no port default of {ENV_EXAMPLE}"
            ));
        }
    }
    let image_env: BTreeMap<String, String> = dockerfile
        .env()
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect();
    for (name, service) in compose.services() {
        let published: Vec<(Option<u16>, u16)> = service["ports"]
            .as_vec()
            .map(|ports| ports.iter().filter_map(port_mapping).collect())
            .unwrap_or_default();
        if name == "rabbitmq" && !published.iter().any(|(_, c)| *c == 15692) {
            problems.push(format!(
                "{}: RabbitMQ's Prometheus port 15692 is not published",
                compose.at(Some(&name), "ports:")
            ));
        }
        if SCALED.contains(&name.as_str()) {
            if !published.is_empty() {
                problems.push(format!(
                    "{}: service {name} publishes host ports, so `--scale {name}=3` would clash; use expose",
                    compose.at(Some(&name), "ports:")
                ));
            }
            if !service["container_name"].is_badvalue() {
                problems.push(format!(
                    "{}: service {name} has a container_name, so `--scale {name}=3` cannot work",
                    compose.at(Some(&name), "container_name:")
                ));
            }
        }
        if !is_built(service) {
            continue;
        }
        for (host, container) in &published {
            let at = compose.at(Some(&name), &format!(":{container}"));
            if !defaults.contains_key(container) {
                problems.push(format!(
                    "{at}: service {name} publishes {container}, no port default of {ENV_EXAMPLE}"
                ));
            }
            if host.is_some_and(|h| h != *container) {
                problems.push(format!(
                    "{at}: service {name} publishes container port {container} on host port {}; scripts/up prints the same number for both",
                    host.unwrap_or(0)
                ));
            }
        }
        for entry in service["expose"].as_vec().into_iter().flatten() {
            let port = port_mapping(entry).map(|(_, c)| c).unwrap_or(0);
            if !defaults.contains_key(&port) {
                problems.push(format!(
                    "{}: service {name} exposes {port}, no port default of {ENV_EXAMPLE}",
                    compose.at(Some(&name), "expose:")
                ));
            }
        }
        let mut effective = image_env.clone();
        effective.extend(environment(service));
        for (key, value) in &effective {
            if key.ends_with("_PORT") && env.get(key).is_some_and(|d| d != value) {
                problems.push(format!(
                    "{}: service {name} sets {key}={value}, but the image exposes the default {} of {ENV_EXAMPLE}",
                    compose.at(Some(&name), key),
                    env[key]
                ));
            }
        }
        for key in LISTEN_HOSTS {
            if effective.get(*key).map(String::as_str) != Some("0.0.0.0") {
                problems.push(format!(
                    "{}: service {name} needs {key}=0.0.0.0 (in the Dockerfile or here), or nothing outside its container reaches it",
                    compose.at(Some(&name), "environment:")
                ));
            }
        }
    }
    problems
}

/// Every `${NAME...}` or `$NAME` the compose file interpolates (not `$$`),
/// with its line and its default, if any.
fn interpolations(text: &str) -> Vec<(usize, String, Option<String>)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let bytes = line.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            if bytes[at] != b'$' {
                at += 1;
                continue;
            }
            if bytes.get(at + 1) == Some(&b'$') {
                at += 2;
                continue;
            }
            let rest = &line[at + 1..];
            if let Some(inner) = rest.strip_prefix('{') {
                let end = inner.find('}').unwrap_or(inner.len());
                let body = &inner[..end];
                let name_end = body
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(body.len());
                let (name, modifier) = body.split_at(name_end);
                let default = modifier
                    .strip_prefix(":-")
                    .or_else(|| modifier.strip_prefix('-'))
                    .map(str::to_owned);
                found.push((i + 1, name.to_owned(), default));
                at += end + 2;
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push((i + 1, name.clone(), None));
                }
                at += 1 + name.len();
            }
        }
    }
    found
}

fn variable_problems(
    compose: &Compose,
    dockerfile: &Dockerfile,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let file = &compose.file;
    for (line, name, default) in interpolations(&compose.text) {
        match env.get(&name) {
            None if name.starts_with("BIBLIOMQ_") => {
                problems.push(format!("{file}:{line}: reads {name}, which {ENV_EXAMPLE} does not list"))
            }
            None => problems.push(format!(
                "{file}:{line}: reads {name}; use the BIBLIOMQ_* variable the apps read (listed in {ENV_EXAMPLE})"
            )),
            Some(expected) => {
                if let Some(default) = default.filter(|d| d != expected) {
                    problems.push(format!(
                        "{file}:{line}: defaults {name} to `{default}`, but {ENV_EXAMPLE} says `{expected}`"
                    ));
                }
            }
        }
    }
    for (name, service) in compose.services() {
        for (key, _) in environment(service) {
            if key.starts_with("BIBLIOMQ_") && !env.contains_key(&key) {
                problems.push(format!(
                    "{}: service {name} sets {key}, which {ENV_EXAMPLE} does not list",
                    compose.at(Some(&name), &key)
                ));
            }
        }
    }
    for (line, key, _) in dockerfile.env() {
        if key.starts_with("BIBLIOMQ_") && !env.contains_key(&key) {
            problems.push(format!(
                "{DOCKERFILE}:{line}: sets {key}, which {ENV_EXAMPLE} does not list"
            ));
        }
    }
    problems
}

// ----------------------------------------------------------------- tests ---

struct Inputs {
    compose: Compose,
    dockerfile: Dockerfile,
    env: BTreeMap<String, String>,
    binaries: Vec<Binary>,
    versions: Vec<(String, String)>,
}

fn inputs() -> Inputs {
    let (binaries, versions) = workspace();
    Inputs {
        compose: Compose::parse(COMPOSE, &read(COMPOSE)),
        dockerfile: Dockerfile::parse(&read(DOCKERFILE)),
        env: env_example(&read(ENV_EXAMPLE)),
        binaries,
        versions,
    }
}

#[test]
fn every_image_is_pinned_and_served() {
    let i = inputs();
    assert_none(image_problems(&i.compose, &i.dockerfile));
}

#[test]
fn healthchecks_run_commands_their_images_ship() {
    let i = inputs();
    assert_none(healthcheck_problems(&i.compose, &i.dockerfile, &i.binaries));
}

#[test]
fn one_shot_services_are_awaited() {
    assert_none(one_shot_problems(&inputs().compose));
}

#[test]
fn the_image_builds_the_workspace_binaries_compose_runs() {
    let i = inputs();
    assert_none(binary_problems(
        &i.dockerfile,
        &i.binaries,
        &i.compose,
        &i.versions,
    ));
}

#[test]
fn ports_agree_with_env_example() {
    let i = inputs();
    assert_none(port_problems(&i.compose, &i.dockerfile, &i.env));
}

#[test]
fn compose_reads_only_the_apps_variables() {
    let i = inputs();
    assert_none(variable_problems(&i.compose, &i.dockerfile, &i.env));
}

#[test]
fn the_build_context_keeps_what_the_build_needs() {
    let ignored: Vec<String> = read(DOCKERIGNORE)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect();
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "migrations".to_owned(),
        ENV_EXAMPLE.to_owned(),
    ];
    needed.extend(members());
    for path in needed {
        if let Some(pattern) = ignored.iter().find(|p| **p == path || p.as_str() == "*") {
            panic!(
                "{DOCKERIGNORE}: `{pattern}` leaves {path} out of the build context, which the build needs"
            );
        }
    }
    assert!(
        ignored.iter().any(|p| p == ".git"),
        "{DOCKERIGNORE}: leave .git out of the build context"
    );
    assert!(
        ignored.iter().any(|p| p == ".env"),
        "{DOCKERIGNORE}: leave .env (local secrets) out of the build context"
    );
}

/// The checks themselves, on the compose file as it was when the Docker
/// path broke: each of its faults is reported, with its line.
#[test]
fn the_checks_catch_what_broke_the_docker_path() {
    let old = Compose::parse(
        "old.yml",
        r#"services:
  rabbitmq:
    image: rabbitmq:4.1-management
    healthcheck:
      test: ["CMD", "rabbitmq-diagnostics", "-q", "check_port_connectivity"]
  minio:
    image: minio/minio:latest
    environment:
      MINIO_ROOT_USER: ${S3_ACCESS_KEY:-GK6269626c696f6d712d646576}
    healthcheck:
      test: ["CMD", "curl", "-fsS", "http://127.0.0.1:9000/minio/health/live"]
  minio-buckets:
    image: minio/mc
    depends_on:
      minio:
        condition: service_healthy
    restart: "no"
  postgres:
    image: postgres:17
  workers:
    build: ..
    image: bibliomq:local
    container_name: workers
    command: ["bibliomq-workers", "run"]
    ports:
      - "9101:9101"
    environment:
      BIBLIOMQ_S3_ACCES_KEY: typo
    healthcheck:
      test: ["CMD-SHELL", "curl -f http://127.0.0.1:9101/readyz"]
"#,
    );
    let i = inputs();
    let mut problems = image_problems(&old, &i.dockerfile);
    problems.extend(healthcheck_problems(&old, &i.dockerfile, &i.binaries));
    problems.extend(one_shot_problems(&old));
    problems.extend(port_problems(&old, &i.dockerfile, &i.env));
    problems.extend(variable_problems(&old, &i.dockerfile, &i.env));
    let expect = [
        "old.yml:3: service rabbitmq: image rabbitmq:4.1-management: tag 4.1-management floats",
        "old.yml:7: service minio: image minio/minio:latest comes from a namespace that is gone",
        "old.yml:13: service minio-buckets: image minio/mc comes from a namespace that is gone",
        "old.yml:19: service postgres: image postgres:17: tag 17 floats",
        "old.yml:11: service minio: healthcheck runs `curl`",
        "old.yml:30: service workers: healthcheck `curl -f http://127.0.0.1:9101/readyz` is not `<binary> healthcheck`",
        "old.yml:17: service minio-buckets runs once, but no service",
        "old.yml:25: service workers publishes host ports",
        "old.yml:23: service workers has a container_name",
        "old.yml:9: reads S3_ACCESS_KEY; use the BIBLIOMQ_* variable",
        "old.yml:28: service workers sets BIBLIOMQ_S3_ACCES_KEY, which .env.example does not list",
    ];
    for expected in expect {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "not reported: {expected}\nreported:\n  {}",
            problems.join("\n  ")
        );
    }
    // And a file without faults passes: the image references alone.
    for good in [
        "rabbitmq:4.1.4-management",
        "postgres:17.6-bookworm",
        "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z",
        "docker.io/library/debian:12.12-slim",
        "rust:1.91.1-slim-bookworm@sha256:0000",
    ] {
        assert_eq!(image_problem(good), None, "{good}");
    }
    for bad in [
        "rabbitmq",
        "rabbitmq:latest",
        "docker.io/minio/minio:RELEASE.2025-09-07T16-13-09Z",
        "quay.io/minio/mc:latest",
        "quay.io/minio/mc:2025",
        "redis:7.4.1",
    ] {
        assert!(image_problem(bad).is_some(), "{bad} passed");
    }
}
