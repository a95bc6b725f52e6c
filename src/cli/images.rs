//! Local image commands: build, images, load, save, tag, rmi, image prune. Each is a thin
//! call over `crate::client`; the store is `$AAC_HOME/images` (default `~/.aac/images`).

use crate::client::archive;
use crate::client::build::{self, LocalBase};
use crate::client::list::{self, Filter, ImageRow};
use crate::client::store::{normalize_ref, ref_name, Store};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

/// The local image commands, flattened into `agent`'s top level.
#[derive(Subcommand)]
pub enum LocalCommand {
    /// Build an image from a directory (no container engine): one reproducible layer on
    /// top of the base named in agent.yaml, or of nothing.
    Build(BuildArgs),
    /// List the images of the local store.
    Images(ImagesArgs),
    /// Load images from an OCI image layout (a directory, or a tar of one, gzip or not)
    /// or a `docker save` archive.
    Load(LoadArgs),
    /// Save images to a tar that is an OCI image layout and a `docker save` archive at
    /// once (`docker load`, `skopeo copy oci-archive:FILE` and `docker-archive:FILE` read it).
    Save(SaveArgs),
    /// Give an image another name: agent tag SOURCE[:TAG] TARGET[:TAG].
    Tag {
        /// An image: NAME[:TAG], a manifest digest or an image ID.
        source: String,
        /// The new NAME[:TAG].
        target: String,
    },
    /// Remove tags; an image left without a tag is deleted with its unshared blobs.
    Rmi {
        /// Images: NAME[:TAG] (or an image ID that only one tag names).
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Manage local images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Remove untagged images (with -a: all images) and the blobs only they used.
    Prune {
        /// Remove all images, not just untagged ones.
        #[arg(long, short = 'a')]
        all: bool,
        /// Do not ask for confirmation.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// List the images of the local store (same as `agent images`).
    Ls(ImagesArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// Name and tag, NAME[:TAG]; default: name and version from agent.yaml.
    #[arg(long, short = 't')]
    pub tag: Option<String>,
    /// Only print the image ID.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// The build context: the directory packaged into the image (with agent.yaml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Args)]
pub struct ImagesArgs {
    /// Keep images whose NAME:TAG contains TEXT; or reference=PATTERN, label=KEY[=VALUE],
    /// before=IMAGE, since=IMAGE, dangling=true|false. Repeat to combine (all must match).
    #[arg(long)]
    pub filter: Vec<String>,
    /// Include untagged images.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Print a JSON array with full values.
    #[arg(long)]
    pub json: bool,
    /// Only print image IDs.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args)]
pub struct LoadArgs {
    /// The archive file or layout directory.
    #[arg(long, short = 'i')]
    pub input: PathBuf,
    /// The repository for images the layout names by a tag alone (as `skopeo copy ...
    /// oci:DIR:TAG` writes them): they are loaded as REPO:TAG.
    #[arg(long, value_name = "REPO")]
    pub name: Option<String>,
    /// Only print the loaded names.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args)]
pub struct SaveArgs {
    /// Images to save: NAME[:TAG].
    #[arg(required = true)]
    pub images: Vec<String>,
    /// The tar file to write (default: stdout, unless it is a terminal).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

pub fn run(cmd: LocalCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = Store::open_default()?;
    match cmd {
        LocalCommand::Build(a) => build_cmd(&store, a, out),
        LocalCommand::Images(a)
        | LocalCommand::Image {
            command: ImageCommand::Ls(a),
        } => images(&store, a, out),
        LocalCommand::Load(a) => load(&store, a, out),
        LocalCommand::Save(a) => save(&store, a, out),
        LocalCommand::Tag { source, target } => {
            let d = store.resolve(&source)?;
            store.set_tag(&normalize_ref(&target)?, &d)
        }
        LocalCommand::Rmi { images } => {
            let r = store.remove_tags(&images)?;
            for u in r.untagged {
                writeln!(out, "Untagged: {u}")?;
            }
            for d in r.deleted {
                writeln!(out, "Deleted: {d}")?;
            }
            match r.failed.len() {
                0 => Ok(()),
                _ => bail!("{}", r.failed.join("; ")),
            }
        }
        LocalCommand::Image {
            command: ImageCommand::Prune { all, force },
        } => prune(&store, all, force, out),
    }
}

fn build_cmd(store: &Store, a: BuildArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let tag = match &a.tag {
        Some(t) => normalize_ref(t)?,
        None => {
            let spec = build::AgentYaml::read(&a.dir)?;
            match (spec.name, spec.version) {
                (Some(n), v) => {
                    normalize_ref(&format!("{n}:{}", v.unwrap_or_else(|| "latest".into())))?
                }
                (None, _) => bail!("no image name: give -t NAME:TAG or a name in agent.yaml"),
            }
        }
    };
    let b = build::build(store, &a.dir, &tag, &LocalBase)?;
    if a.quiet {
        writeln!(out, "{}", b.config)?;
    } else {
        writeln!(
            out,
            "Successfully built {}",
            short_id(&b.config.to_string())
        )?;
        writeln!(out, "Successfully tagged {tag}")?;
        writeln!(out, "Digest: {}", b.manifest.digest)?;
    }
    Ok(())
}

fn images(store: &Store, a: ImagesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let rows = list::list(
        store,
        a.all || a.filter.iter().any(|f| f == "dangling=true"),
    )?;
    let filters = a
        .filter
        .iter()
        .map(|f| Filter::parse(f, &rows, store))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rows: Vec<&ImageRow> = rows
        .iter()
        .filter(|r| filters.iter().all(|f| f.matches(r)))
        .collect();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if a.quiet {
        for r in rows {
            writeln!(out, "{}", short_id(&r.id))?;
        }
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.repository.clone().unwrap_or_else(|| "<none>".into()),
                r.tag.clone().unwrap_or_else(|| "<none>".into()),
                short_id(&r.id),
                r.created_secs()
                    .map(|c| format!("{} ago", human_duration(now - c)))
                    .unwrap_or_else(|| "N/A".into()),
                human_size(r.size),
            ]
        })
        .collect();
    let head = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"];
    let mut w = head.map(str::len);
    for row in &table {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        s
    };
    writeln!(out, "{}", line(head))?;
    for r in &table {
        writeln!(out, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4]]))?;
    }
    Ok(())
}

fn load(store: &Store, a: LoadArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(n) = &a.name {
        normalize_ref(n)?;
        if crate::client::store::has_tag(n) {
            bail!("--name takes a repository without a tag, not {n}");
        }
    }
    let loaded = archive::load(store, &a.input, a.name.as_deref())?;
    for (name, d) in loaded {
        match name {
            Some(n) => writeln!(out, "Loaded image: {n}")?,
            None if a.quiet => {}
            None => writeln!(out, "Loaded image ID: {}", d.digest)?,
        }
    }
    Ok(())
}

fn save(store: &Store, a: SaveArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(path) = a.output else {
        if std::io::stdout().is_terminal() {
            bail!("refusing to write an archive to a terminal: give -o FILE or redirect stdout");
        }
        return archive::save(store, &a.images, out);
    };
    // Written beside the target and renamed: no half-written archive under the name.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".into());
    let tmp = dir.join(format!(
        ".{file_name}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let r = (|| -> anyhow::Result<()> {
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(256 * 1024, f);
        archive::save(store, &a.images, &mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn prune(store: &Store, all: bool, force: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if !force {
        let what = if all {
            "all images"
        } else {
            "all untagged images"
        };
        if !std::io::stdin().is_terminal() {
            bail!(
                "agent image prune removes {what}: confirm with --force (stdin is not a terminal)"
            );
        }
        eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(());
        }
    }
    let (removed, freed) = store.prune(all)?;
    if !removed.is_empty() {
        writeln!(out, "Deleted Images:")?;
        for d in &removed {
            match ref_name(d) {
                Some(n) => writeln!(out, "untagged: {n}")?,
                None => writeln!(out, "deleted: {}", d.digest)?,
            }
        }
        writeln!(out)?;
    }
    writeln!(out, "Total reclaimed space: {}", human_size(freed))?;
    Ok(())
}

/// The first 12 hex digits of a digest, as docker shows image IDs.
pub fn short_id(d: &str) -> String {
    let hex = d.split_once(':').map(|(_, h)| h).unwrap_or(d);
    hex.chars().take(12).collect()
}

/// Sizes as docker prints them: decimal units, three significant digits (`7.8MB`, `512B`).
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 999.5 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    let s = if v >= 99.95 {
        format!("{v:.0}")
    } else if v >= 9.995 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", units[u])
}

/// Durations as docker prints them ("About an hour", "3 days", "2 years").
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let minutes = secs / 60;
    let hours = (secs as f64 / 3600.0).round() as i64;
    match () {
        _ if secs < 1 => "Less than a second".into(),
        _ if secs == 1 => "1 second".into(),
        _ if secs < 60 => format!("{secs} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_like_docker() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(12_345), "12.3kB");
        assert_eq!(human_size(7_800_000), "7.8MB");
        assert_eq!(human_size(1_234_000_000), "1.23GB");
        assert_eq!(human_size(150_000_000), "150MB");
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(3 * 3600), "3 hours");
        assert_eq!(human_duration(5 * 86_400), "5 days");
        assert_eq!(human_duration(56 * 365 * 86_400), "56 years");
    }
}
