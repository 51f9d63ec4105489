//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Command-line client of bibliomq: tasks, library circulation, and replaying
/// request files against a running system.
///
/// Exit codes: 0 done; 1 the API refused the request or the work failed (a
/// rejected renewal, a failed task, a replay with failed lines); 2 usage
/// error; 3 the API cannot be reached; 4 the API failed (5xx, or an answer
/// the client cannot read).
#[derive(Debug, Parser)]
#[command(name = "bibliomq", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Base URL of the bibliomq API.
    #[arg(
        long,
        env = "BIBLIOMQ_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api_url: String,
    /// Bearer token, when the API was started with BIBLIOMQ_API_TOKEN.
    #[arg(
        long,
        env = "BIBLIOMQ_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Machine-readable output: JSON on stdout, also for errors.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on one HTTP request after this many seconds.
    #[arg(long, default_value_t = 30.0, global = true, value_name = "SECS")]
    pub request_timeout: f64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit, follow and list tasks; fetch their results.
    #[command(subcommand)]
    Task(TaskCommand),
    /// List and replay what sits in the dead-letter queues.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Lend a copy of a title, by ISBN or by title.
    Loan(LoanArgs),
    /// Renew a loan (accepted at once, applied by a worker).
    Renew(CirculationArgs),
    /// Return a loan (accepted at once, applied by a worker).
    Return(CirculationArgs),
    /// Follow a renewal or return by its operation id.
    Operation {
        id: String,
        /// Wait until it is applied or rejected.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        wait_for: WaitArgs,
    },
    /// A title: copies per branch, availability, due dates.
    Book { isbn: String },
    /// Titles containing every word given (case and accents ignored).
    Search {
        #[arg(required = true, num_args = 1..)]
        words: Vec<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// A patron's loans, soonest due first.
    Loans {
        patron: String,
        /// Returned loans too.
        #[arg(long)]
        all: bool,
    },
    /// The library's branches.
    Branches,
    /// Add titles to the catalogue.
    #[command(subcommand)]
    Title(TitleCommand),
    /// Add copies of a title; withdraw a copy.
    #[command(subcommand)]
    Copy(CopyCommand),
    /// Add, block, unblock, show and list patrons.
    #[command(subcommand)]
    Patron(PatronCommand),
    /// Import titles or patrons from a CSV file (see the README for the columns).
    #[command(subcommand)]
    Import(ImportCommand),
    /// Place, cancel and list holds on titles with no copy at hand.
    #[command(subcommand)]
    Hold(HoldCommand),
    /// Whether the API and its dependencies (RabbitMQ, PostgreSQL, S3) are ready.
    Status,
    /// Follow the live outcome events (tasks, loans, renewals, returns,
    /// holds) as they happen, one a line, until Ctrl-C; what a key sees
    /// depends on its role.
    Events {
        /// Comma-separated topic patterns: `*` one word, `#` any
        /// (`task.*,loaned.#`). Every event when absent.
        #[arg(long)]
        keys: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Replay a request file: one operation per line (see `bibliomq run --help`).
    Run(RunArgs),
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// Dead letters, oldest first: id, routing key, reason, attempts, when,
    /// last error. Nothing is taken from the queue.
    List {
        /// `tasks` or `library`.
        #[arg(long, default_value = "tasks")]
        queue: String,
        #[arg(long)]
        limit: Option<u32>,
        /// Page on: the cursor the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Send dead letters back to where they came from; each leaves the
    /// queue once the broker has confirmed it.
    Replay {
        /// `tasks` or `library`.
        #[arg(long, default_value = "tasks")]
        queue: String,
        /// Every dead letter in the queue.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        ids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Submit a task. The payload is JSON when it parses as JSON, otherwise
    /// the words given, as one string: `task submit upper hola mundo`.
    /// With `--file`, submit every task of an NDJSON file in batches.
    Submit {
        #[arg(required_unless_present = "file")]
        action: Option<String>,
        /// `30`, `1,2,3`, `'{"name": "Ana"}'`, `hola mundo`...
        payload: Vec<String>,
        /// Send the payload as a string even when it looks like JSON.
        #[arg(long)]
        string: bool,
        /// Run it at this time (RFC 3339, e.g. 2030-01-31T09:00:00Z): it is
        /// `scheduled` until then.
        #[arg(long, value_name = "RFC3339", conflicts_with = "delay")]
        at: Option<String>,
        /// Run it this many milliseconds from now.
        #[arg(long, value_name = "MS")]
        delay: Option<u64>,
        /// Wait for the task to finish and print its result.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        wait_for: WaitArgs,
        /// Submit the tasks of this NDJSON file (`-` for stdin), one JSON
        /// object a line as `POST /v1/tasks/batch` takes them
        /// (`{"action": "sum", "payload": "1,2"}`, optionally `timeout_ms`,
        /// `run_at`, `delay_ms`, `idempotency_key`), streamed in batches:
        /// each batch is queued whole or not at all. Prints a summary.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["action", "payload", "at", "delay", "wait"])]
        file: Option<PathBuf>,
        /// Tasks per batch with `--file` (1 to 1000).
        #[arg(long, value_name = "N", default_value_t = 1000, requires = "file",
              value_parser = clap::value_parser!(u16).range(1..=1000))]
        batch_size: u16,
    },
    /// A task's state, attempts, timestamps, error and (small) result.
    Get { id: String },
    /// Cancel a task: a queued one never runs; a running one is stopped by
    /// its worker. Cancelling again is harmless; a finished task cannot be.
    Cancel { id: String },
    /// Tasks, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// Page on: tasks older than this id.
        #[arg(long)]
        before: Option<String>,
    },
    /// A task's result; large results are streamed (and checked against
    /// their SHA-256) into the file given with -o.
    Result {
        id: String,
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TitleCommand {
    /// Add a title (an ISBN-10 is stored as its ISBN-13).
    Add {
        isbn: String,
        #[arg(long)]
        title: String,
        /// An author; repeat for several.
        #[arg(long = "author")]
        authors: Vec<String>,
        #[arg(long)]
        year: Option<i32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CopyCommand {
    /// Add a copy of a title at a branch; a barcode is made when none is given.
    Add {
        isbn: String,
        #[arg(long)]
        branch: String,
        #[arg(long)]
        barcode: Option<String>,
    },
    /// Withdraw a copy: never lent again, its history kept.
    Withdraw { barcode: String },
}

#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Place a hold for a patron, to pick up at a branch: answered with its
    /// place in the title's queue.
    Place {
        /// The ISBN (ISBN-13, or ISBN-10; hyphens allowed).
        #[arg(required_unless_present = "title", conflicts_with = "title")]
        isbn: Option<String>,
        /// Words of the title instead of the ISBN.
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        patron: String,
        /// Where the patron picks the copy up (see `bibliomq branches`).
        #[arg(long)]
        branch: String,
    },
    /// Cancel a hold (cancelling twice changes nothing).
    Cancel {
        id: String,
        /// The patron this acts for: the hold must be theirs.
        #[arg(long)]
        patron: Option<String>,
    },
    /// A patron's holds (`--patron`) or a title's queue (`--isbn`).
    List {
        #[arg(long, required_unless_present = "isbn", conflicts_with = "isbn")]
        patron: Option<String>,
        #[arg(long)]
        isbn: Option<String>,
        /// A patron's closed holds too.
        #[arg(long, requires = "patron")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PatronCommand {
    /// Add a patron.
    Add {
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: Option<String>,
    },
    /// Block a patron: no loans or renewals until unblocked.
    Block {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Unblock a patron.
    Unblock { id: String },
    /// A patron: name, e-mail, whether blocked and why.
    Show { id: String },
    /// Patrons in id order, whose id starts with QUERY or whose name contains it.
    List {
        query: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// The cursor printed after the page before.
        #[arg(long)]
        cursor: Option<String>,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Titles: columns isbn, title, authors (separated by `;`), year.
    Titles(ImportArgs),
    /// Patrons: columns id, name, email.
    Patrons(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV file, with a header line.
    pub file: PathBuf,
    /// Rows sent in one request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// How long --wait waits before giving up.
    #[arg(long = "wait-timeout", default_value_t = 60.0, value_name = "SECS")]
    pub timeout: f64,
}

#[derive(Debug, Args)]
pub struct LoanArgs {
    /// The ISBN (ISBN-13, or ISBN-10; hyphens allowed).
    #[arg(required_unless_present = "title", conflicts_with = "title")]
    pub isbn: Option<String>,
    /// Words of the title instead of the ISBN.
    #[arg(long)]
    pub title: Option<String>,
    #[arg(long)]
    pub patron: String,
    /// Branch code (see `bibliomq branches`).
    #[arg(long)]
    pub branch: String,
    /// Your key for a safe retry: the same key gets the same loan back.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct CirculationArgs {
    /// The ISBN of the book on loan (or give --loan-id).
    #[arg(required_unless_present = "loan_id")]
    pub isbn: Option<String>,
    #[arg(long)]
    pub patron: Option<String>,
    #[arg(long)]
    pub branch: String,
    /// The loan's id instead of ISBN and patron.
    #[arg(long)]
    pub loan_id: Option<String>,
    /// Wait until the worker applied or rejected it.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub wait_for: WaitArgs,
}

/// Replay a request file.
///
/// One operation per line; `#` starts a comment line; blank lines are
/// skipped; keywords are case-insensitive:
///
///   LOAN 9788437604947 ana central          a loan by ISBN
///   LOAN "La sombra del viento" luis norte  a loan by title (quoted)
///   RENEW 9788437604947 ana central         renew ana's loan of that ISBN
///   RETURN 9788437604947 ana central        return it at that branch
///   TASK fib 30                             a task; the rest of the line is
///   TASK sum 1,2,3                          the payload (JSON if it parses,
///   TASK upper hola mundo                   else a string)
///
/// PRESTAMO, RENOVACION and DEVOLUCION (accents optional) are the same as
/// LOAN, RENEW and RETURN; TAREA is TASK. Lines about the same patron run
/// in file order; others run concurrently. Each line ends ok, rejected (a
/// library rule or the catalogue said no: 404, 409, a rejected renewal or
/// return) or failed (a line that cannot be parsed, a transport error, a
/// 5xx, a 4xx saying the line is wrong, a failed task). The exit code is 1
/// when any line failed; rejections do not count.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// The request file (`-` reads standard input).
    pub file: PathBuf,
    /// Operations in flight at once.
    #[arg(long, short = 'c', default_value_t = 8)]
    pub concurrency: usize,
    /// Start operations at this steady rate (per second) instead of as fast
    /// as the concurrency allows.
    #[arg(long, value_name = "OPS_PER_SEC")]
    pub rate: Option<f64>,
    /// Renewals and returns: wait until applied or rejected; tasks: until finished.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub wait_for: WaitArgs,
    /// Write an HTML report (throughput and latency percentiles over time).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Only parse the file and report its errors; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print every rejected operation, not only the failed ones.
    #[arg(long, short)]
    pub verbose: bool,
}
