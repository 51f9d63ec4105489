//! A deterministic demo catalogue: the same titles, copies and patrons on
//! every machine, generated from small word lists with a fixed-seed PRNG,
//! plus a few well-known titles. Some copies start on loan (a few overdue),
//! relative to the clock's "now".

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::{Isbn, Rules};
use crate::config::Branch;

#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Generated titles, on top of the well-known ones.
    pub titles: usize,
    /// Copies of each title per branch: from `min_copies` to `max_copies`.
    pub min_copies: u32,
    pub max_copies: u32,
    pub patrons: usize,
    /// Share of copies that start on loan. With 0, nothing does (not even
    /// the copies of the well-known titles that otherwise start lent).
    pub on_loan: f64,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            titles: 1_200,
            min_copies: 1,
            max_copies: 3,
            patrons: 300,
            on_loan: 0.15,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedReport {
    pub titles: usize,
    pub copies: usize,
    pub patrons: usize,
    pub loans: usize,
}

/// A well-known title: ISBN, title, author, year, copies per branch (in
/// branch order), and how many of those start on loan.
pub type Classic = (
    &'static str,
    &'static str,
    &'static str,
    i32,
    &'static [u32],
    &'static [u32],
);

/// Well-known titles every demo catalogue has.
pub const CLASSICS: &[Classic] = &[
    (
        "9788437604947",
        "Don Quijote de la Mancha",
        "Miguel de Cervantes",
        1605,
        &[3, 2],
        &[1, 0],
    ),
    (
        "9788497592208",
        "La sombra del viento",
        "Carlos Ruiz Zafón",
        2001,
        &[2, 1],
        &[0, 0],
    ),
    (
        "9780140449266",
        "Crimen y castigo",
        "Fiódor Dostoyevski",
        1866,
        &[1, 1],
        &[0, 1],
    ),
];

/// Patrons with short ids, handy in examples and request files.
pub const NAMED_PATRONS: &[(&str, &str)] = &[
    ("ana", "Ana Ferrer"),
    ("luis", "Luis Campos"),
    ("marta", "Marta Ibáñez"),
    ("jorge", "Jorge Salinas"),
    ("lucia", "Lucía Montero"),
    ("pablo", "Pablo Quesada"),
    ("sofia", "Sofía Arrieta"),
    ("diego", "Diego Varela"),
    ("elena", "Elena Robles"),
    ("carmen", "Carmen Olmedo"),
];

const NOUNS_F: &[&str] = &[
    "casa",
    "sombra",
    "ciudad",
    "noche",
    "montaña",
    "memoria",
    "isla",
    "carta",
    "voz",
    "frontera",
    "orilla",
    "luz",
    "tormenta",
    "biblioteca",
    "estación",
    "puerta",
    "llave",
    "ventana",
    "costa",
    "llanura",
    "torre",
    "huella",
    "promesa",
    "herida",
    "lluvia",
    "ruta",
];
const NOUNS_M: &[&str] = &[
    "jardín",
    "viento",
    "río",
    "silencio",
    "espejo",
    "secreto",
    "camino",
    "invierno",
    "mar",
    "puente",
    "desierto",
    "reloj",
    "faro",
    "bosque",
    "verano",
    "laberinto",
    "horizonte",
    "puerto",
    "mapa",
    "cuaderno",
    "regreso",
    "sueño",
    "eco",
    "valle",
    "volcán",
    "olvido",
];
const ADJ: &[(&str, &str)] = &[
    ("olvidado", "olvidada"),
    ("oscuro", "oscura"),
    ("último", "última"),
    ("secreto", "secreta"),
    ("perdido", "perdida"),
    ("blanco", "blanca"),
    ("lejano", "lejana"),
    ("dormido", "dormida"),
    ("infinito", "infinita"),
    ("pequeño", "pequeña"),
    ("antiguo", "antigua"),
    ("callado", "callada"),
];
const OPENERS: &[&str] = &[
    "Crónica", "Historia", "Memorias", "Elogio", "Diario", "Tratado",
];
const FIRST_NAMES: &[&str] = &[
    "Alba", "Bruno", "Celia", "Darío", "Emma", "Fermín", "Gloria", "Hugo", "Irene", "Julián",
    "Laura", "Mateo", "Nora", "Óscar", "Paula", "Raúl", "Sara", "Tomás", "Valeria", "Xavier",
];
const SURNAMES: &[&str] = &[
    "Aranda", "Benítez", "Cordero", "Duarte", "Escobar", "Fuentes", "Galán", "Herrero", "Iglesias",
    "Jurado", "Lozano", "Medina", "Navarro", "Ortega", "Pardo", "Quintana", "Rivas", "Soler",
    "Toledo", "Urrutia", "Vidal", "Zamora",
];

/// splitmix64: tiny, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, p: f64) -> bool {
        #[allow(clippy::cast_precision_loss)]
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }
}

fn generated_title(rng: &mut Rng) -> String {
    let feminine = rng.chance(0.5);
    let (det, noun) = if feminine {
        ("La", *rng.pick(NOUNS_F))
    } else {
        ("El", *rng.pick(NOUNS_M))
    };
    let of = |rng: &mut Rng| {
        if rng.chance(0.5) {
            format!("de la {}", rng.pick(NOUNS_F))
        } else {
            format!("del {}", rng.pick(NOUNS_M))
        }
    };
    match rng.below(4) {
        0 => format!("{det} {noun} {}", of(rng)),
        1 => {
            let (m, f) = *rng.pick(ADJ);
            format!("{det} {noun} {}", if feminine { f } else { m })
        }
        2 => format!("{} {}", rng.pick(OPENERS), of(rng)),
        _ => {
            let (m, f) = *rng.pick(ADJ);
            format!("{det} {noun} {} {}", if feminine { f } else { m }, of(rng))
        }
    }
}

fn person(rng: &mut Rng) -> String {
    format!(
        "{} {} {}",
        rng.pick(FIRST_NAMES),
        rng.pick(SURNAMES),
        rng.pick(SURNAMES)
    )
}

struct SeedCopy {
    isbn: String,
    branch: String,
    barcode: String,
    on_loan: bool,
}

/// Connects, applies migrations and loads the catalogue: the `seed`
/// subcommand. `None` when the catalogue already had titles.
pub async fn seed_database(
    settings: &crate::config::Settings,
    options: &SeedOptions,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<SeedReport>> {
    use anyhow::Context;
    let pool = crate::db::pool(&settings.database)?;
    crate::db::migrate(&pool).await?;
    let mut client = pool
        .get()
        .await
        .context("Failed to connect to PostgreSQL")?;
    let tx = client.transaction().await?;
    let rules = Rules::from_settings(&settings.library);
    let report = seed(&tx, &settings.library.branches, options, &rules, now)
        .await
        .context("Failed to load the catalogue")?;
    tx.commit()
        .await
        .context("Failed to commit the catalogue")?;
    Ok(report)
}

/// Loads the catalogue in one transaction (nothing is loaded if it fails).
/// Does nothing, returning `None`, when titles already exist.
pub async fn seed(
    tx: &Transaction<'_>,
    branches: &[Branch],
    options: &SeedOptions,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Option<SeedReport>, tokio_postgres::Error> {
    let existing: i64 = tx
        .query_one("SELECT count(*) FROM titles", &[])
        .await?
        .get(0);
    if existing > 0 {
        return Ok(None);
    }
    super::store::ensure_branches(tx, branches).await?;
    let mut rng = Rng(0x6269_626c_696f);

    let mut isbns = Vec::new();
    let mut titles = Vec::new();
    let mut authors: Vec<Vec<String>> = Vec::new();
    let mut years = Vec::new();
    let mut copies: Vec<SeedCopy> = Vec::new();
    let mut barcode_seq = 0u32;
    let mut add_copy = |copies: &mut Vec<SeedCopy>, isbn: &str, branch: &Branch, on_loan: bool| {
        barcode_seq += 1;
        let prefix: String = branch
            .code
            .chars()
            .take(3)
            .collect::<String>()
            .to_uppercase();
        copies.push(SeedCopy {
            isbn: isbn.to_owned(),
            branch: branch.code.clone(),
            barcode: format!("{prefix}-{barcode_seq:06}"),
            on_loan,
        });
    };

    for (isbn, title, author, year, per_branch, lent) in CLASSICS {
        isbns.push((*isbn).to_owned());
        titles.push((*title).to_owned());
        authors.push(vec![(*author).to_owned()]);
        years.push(*year);
        for (i, branch) in branches.iter().enumerate() {
            let n = per_branch.get(i).copied().unwrap_or(1);
            let on_loan = lent.get(i).copied().unwrap_or(0);
            for k in 0..n {
                add_copy(
                    &mut copies,
                    isbn,
                    branch,
                    k < on_loan && options.on_loan > 0.0,
                );
            }
        }
    }

    let mut seen: HashSet<String> = titles.iter().cloned().collect();
    let span = options.max_copies.saturating_sub(options.min_copies) as usize + 1;
    let mut n = 0u64;
    while isbns.len() < options.titles + CLASSICS.len() {
        let mut title = generated_title(&mut rng);
        if !seen.insert(title.clone()) {
            // Same words drawn again: make it a later volume.
            let mut volume = 2;
            while !seen.insert(format!("{title} ({volume})")) {
                volume += 1;
            }
            title = format!("{title} ({volume})");
        }
        // 978-84 (Spain) and a running number: valid and never a real book
        // of the well-known ones above.
        let Some(isbn) = Isbn::from_prefix12(&format!("97884{:07}", 5_000_000 + n)) else {
            break;
        };
        n += 1;
        let writers = if rng.chance(0.15) {
            vec![person(&mut rng), person(&mut rng)]
        } else {
            vec![person(&mut rng)]
        };
        for branch in branches {
            let count = options.min_copies as usize + rng.below(span);
            for _ in 0..count {
                let on_loan = rng.chance(options.on_loan);
                add_copy(&mut copies, isbn.as_str(), branch, on_loan);
            }
        }
        isbns.push(isbn.as_str().to_owned());
        titles.push(title);
        authors.push(writers);
        years.push(1850 + i32::try_from(rng.below(175)).unwrap_or(0));
    }

    // Titles: authors go in as one text per title, split back in SQL
    // (text[][] cannot be ragged).
    let author_lists: Vec<String> = authors.iter().map(|a| a.join("\u{1f}")).collect();
    tx.execute(
        "INSERT INTO titles (isbn, title, authors, published_year)
         SELECT i, t, string_to_array(a, chr(31)), y
           FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS u(i, t, a, y)",
        &[&isbns, &titles, &author_lists, &years],
    )
    .await?;

    let mut patron_ids: Vec<String> = NAMED_PATRONS
        .iter()
        .map(|(id, _)| (*id).to_owned())
        .collect();
    let mut patron_names: Vec<String> =
        NAMED_PATRONS.iter().map(|(_, n)| (*n).to_owned()).collect();
    for i in 1..=options.patrons.saturating_sub(NAMED_PATRONS.len()) {
        patron_ids.push(format!("p{i:04}"));
        patron_names.push(format!("{} {}", rng.pick(FIRST_NAMES), rng.pick(SURNAMES)));
    }
    tx.execute(
        "INSERT INTO patrons (id, name) SELECT * FROM unnest($1::text[], $2::text[])",
        &[&patron_ids, &patron_names],
    )
    .await?;

    let c_isbn: Vec<&str> = copies.iter().map(|c| c.isbn.as_str()).collect();
    let c_branch: Vec<&str> = copies.iter().map(|c| c.branch.as_str()).collect();
    let c_barcode: Vec<&str> = copies.iter().map(|c| c.barcode.as_str()).collect();
    let c_status: Vec<&str> = copies
        .iter()
        .map(|c| if c.on_loan { "on_loan" } else { "available" })
        .collect();
    tx.execute(
        "INSERT INTO copies (isbn, branch, barcode, status)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])",
        &[&c_isbn, &c_branch, &c_barcode, &c_status],
    )
    .await?;

    // Loans for the copies on loan, spread over the generated patrons (the
    // named ones start with empty hands), at most two each.
    let lent: Vec<&SeedCopy> = copies.iter().filter(|c| c.on_loan).collect();
    let borrowers = &patron_ids[NAMED_PATRONS.len().min(patron_ids.len())..];
    let mut loan_ids = Vec::new();
    let mut loan_barcodes = Vec::new();
    let mut loan_patrons = Vec::new();
    let mut loaned_at = Vec::new();
    let mut due_at = Vec::new();
    for (i, copy) in lent.iter().enumerate() {
        let Some(patron) = borrowers.get(i % borrowers.len().max(1)) else {
            break;
        };
        if i >= borrowers.len() * 2 {
            break;
        }
        // Up to 20 days ago: loans older than the loan period are overdue.
        let minutes = i64::try_from(rng.below(20 * 24 * 60)).unwrap_or(0);
        let at = now - Duration::minutes(minutes + 60);
        loan_ids.push(Uuid::now_v7());
        loan_barcodes.push(copy.barcode.as_str());
        loan_patrons.push(patron.as_str());
        loaned_at.push(at);
        due_at.push(rules.due_for_loan(at));
    }
    tx.execute(
        "INSERT INTO loans (id, copy_id, patron_id, branch, loaned_at, due_at)
         SELECT u.id, c.id, u.patron, c.branch, u.loaned_at, u.due_at
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
                AS u(id, barcode, patron, loaned_at, due_at)
           JOIN copies c ON c.barcode = u.barcode",
        &[
            &loan_ids,
            &loan_barcodes,
            &loan_patrons,
            &loaned_at,
            &due_at,
        ],
    )
    .await?;
    // Copies marked on loan beyond what the borrowers could hold go back on the shelf.
    tx.execute(
        "UPDATE copies c SET status = 'available'
          WHERE status = 'on_loan'
            AND NOT EXISTS (SELECT 1 FROM loans l WHERE l.copy_id = c.id AND l.returned_at IS NULL)",
        &[],
    )
    .await?;

    Ok(Some(SeedReport {
        titles: isbns.len(),
        copies: copies.len(),
        patrons: patron_ids.len(),
        loans: loan_ids.len(),
    }))
}
