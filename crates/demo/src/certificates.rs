//! The certificate-titles data set: Django/Wagtail tables of an MITx-Online-like site.
//!
//! Layout of the generated data (all ids are assigned explicitly and identity sequences
//! are reset afterwards):
//!
//! * `courses_program`: program index `i` (0-based) has `id = i + 1` and
//!   `readable_id = program-v1:MITx+DEMO{i:04}`; its [`ProgramKind`] is [`program_kind`]`(i)`.
//! * `wagtailcore_page`: root (`id 1`, path `0001`), home (`id 2`, path `00010001`),
//!   then per program its program page (depth 3, child of home) and certificate page
//!   (depth 4, path = program page path + `0001`), in program order.
//! * `wagtailcore_revision`: per program, first the revisions of its program page
//!   (content type `cms.programpage`, never referenced by a certificate, no
//!   `product_name` key), then those of its certificate page (`cms.certificatepage`),
//!   oldest first. Every page revision has `base_content_type_id` = `wagtailcore.page`,
//!   as Wagtail stores it.
//! * `courses_programcertificate`: per program, certificates pointing at revisions of that
//!   program's certificate page (or NULL).
//!
//! The same rows go to PostgreSQL ([`generate_certificates`]) and SQLite
//! ([`generate_certificates_sqlite`]): everything above, including the revision content
//! documents, is computed here in Rust; the `postgres` and `sqlite` submodules only store
//! finished batches, each encoding values the way Django does on that database.

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{Map, Value};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::mpsc;

use crate::util::{
    analyze, compact_json, django_iso, ensure_empty, json_str, path_step, pipeline, rng_for, send,
    slugify, uuid_from, year_of, Db, BATCH_BYTES, BATCH_ROWS, MS_2016, MS_DAY, MS_END, MS_YEAR,
};
use crate::DemoError;

mod postgres;
mod sqlite;

/// The schema of the certificate-titles job's tables (`sql/certificates.postgres.sql`).
pub const CERTIFICATES_SCHEMA_SQL: &str = include_str!("../sql/certificates.postgres.sql");

/// The same tables as Django creates them on SQLite (`sql/certificates.sqlite.sql`).
pub const CERTIFICATES_SQLITE_SCHEMA_SQL: &str = include_str!("../sql/certificates.sqlite.sql");

/// Creates the certificate-titles tables in the connection's current schema.
pub async fn create_certificate_schema(pool: &PgPool) -> Result<(), DemoError> {
    sqlx::raw_sql(CERTIFICATES_SCHEMA_SQL).execute(pool).await?;
    Ok(())
}

/// Creates the certificate-titles tables in a SQLite database, as Django's migrations do
/// there (see `sql/certificates.sqlite.sql`).
pub async fn create_certificate_schema_sqlite(pool: &SqlitePool) -> Result<(), DemoError> {
    sqlx::raw_sql(CERTIFICATES_SQLITE_SCHEMA_SQL)
        .execute(pool)
        .await?;
    Ok(())
}

/// What to generate with [`generate_certificates`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateParams {
    /// Number of `courses_program` rows.
    pub programs: u32,
    /// Approximate number of certificate-page revisions, spread over the certificate pages
    /// (at least 2 per page; exact whenever it allows that).
    pub revisions: u64,
    /// Seed of every random choice; the same parameters give the same data.
    pub seed: u64,
}

impl Default for CertificateParams {
    fn default() -> Self {
        Self {
            programs: 100,
            revisions: 5_000,
            seed: 42,
        }
    }
}

/// Exact counts of what [`generate_certificates`] inserted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertificateStats {
    /// `courses_program` rows.
    pub programs: u64,
    /// All `wagtailcore_revision` rows: certificate-page revisions plus the (unreferenced)
    /// program-page revisions.
    pub revisions_total: u64,
    /// Distinct revision ids referenced by at least one non-revoked certificate.
    pub referenced_revisions: u64,
    /// `courses_programcertificate` rows.
    pub certificates: u64,
    /// Certificates with `is_revoked = true` (they keep their revision id).
    pub revoked: u64,
    /// Certificates with `certificate_page_revision_id IS NULL`.
    pub without_revision: u64,
}

/// The edge case a program represents, fixed by its 0-based index (see [`program_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// Program page and live certificate page with a real title.
    Normal,
    /// The live `cms_certificatepage.product_name` starts with `PLACEHOLDER - `.
    PlaceholderTitle,
    /// The live `cms_certificatepage.product_name` is `''`.
    EmptyTitle,
    /// No `cms_programpage` (hence no certificate page); certificates have NULL revisions.
    NoProgramPage,
    /// A program page without a certificate page; certificates have NULL revisions.
    NoCertificatePage,
    /// The certificate page exists but `wagtailcore_page.live = false` (unpublished; its
    /// `live_revision_id` is NULL). Certificates still point at its revisions.
    CertificatePageNotLive,
}

impl ProgramKind {
    /// Whether the program has a `cms_programpage`.
    pub fn has_program_page(self) -> bool {
        self != ProgramKind::NoProgramPage
    }

    /// Whether the program has a `cms_certificatepage` (and certificate-page revisions).
    pub fn has_certificate_page(self) -> bool {
        !matches!(
            self,
            ProgramKind::NoProgramPage | ProgramKind::NoCertificatePage
        )
    }
}

/// The kind of the program with 0-based `index` (its id is `index + 1`):
/// `i % 20 == 9` no program page, `i % 20 == 19` program page without certificate page,
/// `i % 10 == 7` placeholder title, `i % 10 == 8` empty title, `i % 30 == 5` certificate
/// page not live, otherwise normal. The rules never overlap; the first 20 programs cover
/// every kind.
pub fn program_kind(index: u32) -> ProgramKind {
    match (index % 20, index % 10, index % 30) {
        (9, _, _) => ProgramKind::NoProgramPage,
        (19, _, _) => ProgramKind::NoCertificatePage,
        (_, 7, _) => ProgramKind::PlaceholderTitle,
        (_, 8, _) => ProgramKind::EmptyTitle,
        (_, _, 5) => ProgramKind::CertificatePageNotLive,
        _ => ProgramKind::Normal,
    }
}

/// `courses_program.readable_id` of the program with 0-based `index`, e.g.
/// `program-v1:MITx+DEMO0007` (the number is the index, so `% 10 == 7` is a placeholder).
pub fn program_readable_id(index: u32) -> String {
    format!("program-v1:MITx+DEMO{index:04}")
}

const PLACEHOLDER_PREFIX: &str = "PLACEHOLDER - ";

// Random streams (see `rng_for`).
const STREAM_PLAN: u64 = 1;
const STREAM_ALLOC: u64 = 2;
const STREAM_REV_TIMES: u64 = 3;
const STREAM_CONTENT: u64 = 4;
const STREAM_CERTS: u64 = 5;
const STREAM_PROGRAM_REVS: u64 = 6;

/// (topic, course code) pairs for program titles.
const TOPICS: &[(&str, &str)] = &[
    ("Modern Entrepreneurship", "ME"),
    ("Supply Chain Management", "SCM"),
    ("Data, Economics, and Design of Policy", "DEDP"),
    ("Statistics and Data Science", "SDS"),
    ("Principles of Manufacturing", "PoM"),
    ("Finance", "FIN"),
    ("Quantum Computing Fundamentals", "QCF"),
    ("Machine Learning with Python", "MLP"),
    ("Digital Transformation", "DT"),
    ("Sustainable Energy Systems", "SES"),
    ("Computational Thinking", "CT"),
    ("Biology and Biochemistry", "BIO"),
    ("Architecture and Urban Planning", "AUP"),
    ("Electric Vehicle Engineering", "EVE"),
    ("Product Management", "PM"),
    ("Climate Science and Policy", "CSP"),
    ("Systems Engineering", "SE"),
    ("Global Health Delivery", "GHD"),
    ("Cybersecurity Leadership", "CYB"),
    ("Applied Macroeconomics", "AME"),
    ("Robotics and Autonomy", "RA"),
    ("Additive Manufacturing", "AM"),
    ("Innovation Leadership", "IL"),
    ("Materials Science", "MS"),
    ("Blockchain Technologies", "BCT"),
    ("Data Analytics for Operations", "DAO"),
    ("Healthcare Innovation", "HI"),
    ("Software Engineering Practice", "SWE"),
    ("Urban Mobility", "UM"),
    ("Leading Digital Organizations", "LDO"),
];

const INSTITUTES: &[&str] = &[
    "MIT Sloan School of Management",
    "MIT Center for Transportation & Logistics",
    "MIT Department of Economics",
    "MIT Schwarzman College of Computing",
    "MIT School of Engineering",
    "MIT Professional Education",
    "Abdul Latif Jameel Poverty Action Lab",
];

/// (name, title_1, organization) of the signatory pool.
const SIGNATORIES: &[(&str, &str, &str)] = &[
    ("Sarah Alvarez", "Program Director", "MITx"),
    ("Chen Wei", "Lecturer", "MIT EECS"),
    ("Anant Agarwal", "CEO", "edX"),
    ("Esther Duflo", "Professor", "MIT Economics"),
    (
        "Krishna Rajagopal",
        "Dean for Digital Learning",
        "MIT Open Learning",
    ),
    ("Yossi Sheffi", "Director", "MIT CTL"),
    ("Maria Gonzalez", "Faculty Director", "MIT Sloan"),
    (
        "David Park",
        "Academic Director",
        "MIT Professional Education",
    ),
    (
        "Amara Okafor",
        "Principal Lecturer",
        "MIT Mechanical Engineering",
    ),
    ("John Hart", "Professor", "MIT Mechanical Engineering"),
    ("Priya Natarajan", "Senior Lecturer", "MIT Sloan"),
    ("Tomas Lozano-Perez", "Professor", "MIT CSAIL"),
];

const DESCRIPTIONS: &[&str] = &[
    "A rigorous, multi-course program that teaches the foundations and the practice of {t}, taught by MIT faculty and designed for working professionals.",
    "Build job-ready skills in {t} through a sequence of online courses with hands-on projects, graded assessments and a proctored final exam.",
    "This program brings MIT's approach to {t} to learners everywhere: video lectures, problem sets and case studies from industry partners.",
    "Earn a credential in {t} that demonstrates mastery of graduate-level material, and apply it towards an accelerated master's degree.",
];

/// Share of non-draft certificate-page revisions that certificates point at.
const REFERENCED_SHARE: f64 = 0.6;
/// Weights of 1..=6 certificates per referenced revision.
const CERTS_PER_REVISION_WEIGHTS: [u32; 6] = [30, 25, 18, 12, 9, 6];
/// Number of course-run overrides prepared per certificate page.
const OVERRIDE_POOL: usize = 40;

struct PageInfo {
    id: i32,
    path: String,
    slug: String,
    url_path: String,
    title: String,
    translation_key: String,
    owner_id: Option<i32>,
}

struct CertificatePage {
    page: PageInfo,
    live: bool,
    /// The live `cms_certificatepage.product_name`.
    product_name: String,
    /// The "real" title (what the live title is, or would be without placeholder/empty).
    base_title: String,
    institute_text: Option<String>,
    ceus: Option<String>,
    /// StreamField value as Wagtail serialises it into revision content (Python
    /// `json.dumps` separators).
    signatories: String,
    /// Course-run override blocks (each a JSON object in Python `json.dumps` style) with
    /// the length each adds once embedded, escaped, in the revision content string.
    overrides: Vec<(String, usize)>,
    live_overrides: usize,
}

struct Plan {
    index: u32,
    id: i32,
    title: String,
    readable_id: String,
    created_ms: i64,
    updated_ms: i64,
    description: String,
    program_page: Option<PageInfo>,
    certificate_page: Option<CertificatePage>,
    program_revisions_first: i32,
    program_revisions: u32,
    certificate_revisions_first: i32,
    certificate_revisions: u32,
}

#[derive(Clone, Copy)]
struct ContentTypes {
    page: i32,
    program_page: i32,
    certificate_page: i32,
}

/// Fills the (empty) certificate-titles tables with a deterministic data set.
///
/// See [`ProgramKind`] for the edge cases and the module layout in the crate docs. Every
/// certificate page has several revisions whose `content.product_name` is an old frozen
/// title (about 1 in 8 already equals the live title, about 1 in 10 of the oldest ones has
/// no `product_name` key); its newest revision is an unpublished draft with yet another
/// title, and its second newest is the live revision (holding the live title). Certificates
/// share revisions (1–6 per referenced revision); about 1 in 15 is revoked and 1 in 25 has
/// no revision.
pub async fn generate_certificates(
    pool: &PgPool,
    p: &CertificateParams,
) -> Result<CertificateStats, DemoError> {
    generate(&Db::Postgres(pool.clone()), p).await
}

/// Fills the (empty) certificate-titles tables of a SQLite database (created with
/// [`create_certificate_schema_sqlite`]) with the same data set as [`generate_certificates`]
/// produces for the same parameters: same ids, pages, revision content documents and
/// certificates, stored as Django stores them on SQLite.
///
/// The pool should point at a database file: with `sqlite::memory:` every pooled
/// connection would see its own empty database.
pub async fn generate_certificates_sqlite(
    pool: &SqlitePool,
    p: &CertificateParams,
) -> Result<CertificateStats, DemoError> {
    generate(&Db::Sqlite(pool.clone()), p).await
}

/// The tables [`generate`] fills; it refuses to add to any that already holds rows.
const TABLES: &[&str] = &[
    "courses_program",
    "wagtailcore_page",
    "wagtailcore_revision",
    "courses_programcertificate",
    "cms_programpage",
    "cms_certificatepage",
];

async fn generate(db: &Db, p: &CertificateParams) -> Result<CertificateStats, DemoError> {
    ensure_empty(db, TABLES).await?;
    let ct = content_types(db).await?;
    let params = *p;
    let plans = tokio::task::spawn_blocking(move || build_plans(&params))
        .await
        .map_err(|e| DemoError::Task(e.to_string()))??;
    let plans = std::sync::Arc::new(plans);

    insert_programs(db, &plans).await?;
    insert_pages(db, &plans, ct).await?;

    let (seed, gen_plans) = (p.seed, std::sync::Arc::clone(&plans));
    let (revisions_total, page_updates) = pipeline(
        db,
        move |tx| generate_revisions(seed, &gen_plans, ct, tx),
        insert_revisions,
    )
    .await?;
    update_page_revisions(db, &page_updates).await?;

    let (seed, gen_plans) = (p.seed, std::sync::Arc::clone(&plans));
    let mut stats = pipeline(
        db,
        move |tx| generate_certificate_rows(seed, &gen_plans, tx),
        insert_certificate_rows,
    )
    .await?;
    stats.programs = plans.len() as u64;
    stats.revisions_total = revisions_total;

    match db {
        Db::Postgres(pool) => postgres::finish(pool).await?,
        // AUTOINCREMENT keeps the largest id ever inserted in sqlite_sequence, explicit
        // ones included, so new rows continue after the generated ids without a reset.
        Db::Sqlite(_) => {}
    }
    analyze(
        db,
        &[
            "django_content_type",
            "courses_program",
            "wagtailcore_page",
            "cms_programpage",
            "cms_certificatepage",
            "wagtailcore_revision",
            "courses_programcertificate",
        ],
    )
    .await?;
    Ok(stats)
}

/// Content types as a Django project registers them (so ids look like real ones); the
/// data set uses three of them.
const CONTENT_TYPES: &[(&str, &str)] = &[
    ("admin", "logentry"),
    ("auth", "permission"),
    ("auth", "group"),
    ("contenttypes", "contenttype"),
    ("sessions", "session"),
    ("users", "user"),
    ("users", "legaladdress"),
    ("wagtailcore", "page"),
    ("wagtailcore", "grouppagepermission"),
    ("wagtailcore", "site"),
    ("wagtailcore", "locale"),
    ("wagtailcore", "collection"),
    ("wagtailcore", "revision"),
    ("wagtailcore", "workflow"),
    ("wagtailcore", "task"),
    ("wagtailcore", "pagelogentry"),
    ("wagtailcore", "comment"),
    ("wagtailimages", "image"),
    ("wagtaildocs", "document"),
    ("courses", "program"),
    ("courses", "course"),
    ("courses", "courserun"),
    ("courses", "courserunenrollment"),
    ("courses", "programenrollment"),
    ("courses", "courseruncertificate"),
    ("courses", "programcertificate"),
    ("cms", "homepage"),
    ("cms", "coursepage"),
    ("cms", "resourcepage"),
    ("cms", "signatorypage"),
    ("cms", "programpage"),
    ("cms", "certificatepage"),
];

/// Registers [`CONTENT_TYPES`] (existing rows are kept) and returns the three the data set
/// uses.
async fn content_types(db: &Db) -> Result<ContentTypes, DemoError> {
    match db {
        Db::Postgres(pool) => postgres::register_content_types(pool).await?,
        Db::Sqlite(pool) => sqlite::register_content_types(pool).await?,
    }
    Ok(ContentTypes {
        page: content_type_id(db, "wagtailcore", "page").await?,
        program_page: content_type_id(db, "cms", "programpage").await?,
        certificate_page: content_type_id(db, "cms", "certificatepage").await?,
    })
}

/// The id of the registered content type `app`.`model`.
async fn content_type_id(db: &Db, app: &str, model: &str) -> Result<i32, sqlx::Error> {
    // The same statement in both dialects: SQLite reads `$n` as the n-th parameter too.
    let sql = "SELECT id FROM django_content_type WHERE app_label = $1 AND model = $2";
    match db {
        Db::Postgres(pool) => {
            sqlx::query_scalar(sql)
                .bind(app)
                .bind(model)
                .fetch_one(pool)
                .await
        }
        Db::Sqlite(pool) => {
            sqlx::query_scalar(sql)
                .bind(app)
                .bind(model)
                .fetch_one(pool)
                .await
        }
    }
}

fn invalid(msg: impl Into<String>) -> DemoError {
    DemoError::InvalidParams(msg.into())
}

fn to_i32(v: u64, what: &str) -> Result<i32, DemoError> {
    i32::try_from(v).map_err(|_| invalid(format!("too many {what} for integer ids")))
}

/// A Python `json.dumps` rendering of a StreamField block list, and the length it adds once
/// embedded as an escaped JSON string (every `"` gains a backslash; nothing else needs one).
fn escaped_len(s: &str) -> usize {
    s.len() + s.bytes().filter(|&b| b == b'"' || b == b'\\').count()
}

fn build_certificate_page(
    rng: &mut StdRng,
    index: u32,
    kind: ProgramKind,
    title: &str,
    code: &str,
    page: PageInfo,
) -> CertificatePage {
    let base_title = match rng.gen_range(0..4) {
        0 => format!("Certificate in {title}"),
        1 => format!("{title} Professional Certificate"),
        2 => format!("MicroMasters Program Certificate in {title}"),
        _ => format!("Professional Certificate in {title}"),
    };
    let product_name = match kind {
        ProgramKind::PlaceholderTitle => format!("{PLACEHOLDER_PREFIX}{base_title}"),
        ProgramKind::EmptyTitle => String::new(),
        _ => base_title.clone(),
    };
    let institute_text =
        (rng.gen_ratio(4, 5)).then(|| INSTITUTES[rng.gen_range(0..INSTITUTES.len())].to_owned());
    let ceus = rng
        .gen_ratio(3, 4)
        .then(|| format!("{}.{:02}", rng.gen_range(1..40), rng.gen_range(0..100)));

    let count = rng.gen_range(1..=4usize);
    let start = rng.gen_range(0..SIGNATORIES.len());
    let signatories: Vec<String> = (0..count)
        .map(|k| {
            let (name, title_1, org) = SIGNATORIES[(start + k * 5) % SIGNATORIES.len()];
            format!(
                "{{\"type\": \"signatory\", \"value\": {{\"name\": {}, \"title_1\": {}, \
                 \"title_2\": \"Massachusetts Institute of Technology\", \"organization\": {}}}, \
                 \"id\": \"{}\"}}",
                json_str(name),
                json_str(title_1),
                json_str(org),
                uuid_from(rng)
            )
        })
        .collect();
    let signatories = format!("[{}]", signatories.join(", "));

    let course_number = 100_000 + index * 7 % 900_000;
    let overrides = (0..OVERRIDE_POOL)
        .map(|j| {
            let block = format!(
                "{{\"type\": \"course_run\", \"value\": {{\"readable_id\": \
                 \"course-v1:MITx+{code}+{course_number:06}+{}T{}_{j:02}\", \"CEUs\": \"{}.{:02}\"}}, \
                 \"id\": \"{}\"}}",
                rng.gen_range(1..=3),
                2019 + j % 7,
                rng.gen_range(0..5),
                rng.gen_range(0..100),
                uuid_from(rng)
            );
            let len = escaped_len(&block);
            (block, len)
        })
        .collect();
    CertificatePage {
        page,
        live: kind != ProgramKind::CertificatePageNotLive,
        product_name,
        base_title,
        institute_text,
        ceus,
        signatories,
        overrides,
        live_overrides: rng.gen_range(0..=6),
    }
}

fn build_plans(p: &CertificateParams) -> Result<Vec<Plan>, DemoError> {
    let mut plans = Vec::with_capacity(p.programs as usize);
    let mut next_page_id: i32 = 3; // 1 = root, 2 = home
    let mut home_children: u32 = 0;
    for index in 0..p.programs {
        let mut rng = rng_for(p.seed, STREAM_PLAN, u64::from(index));
        let kind = program_kind(index);
        let (topic, code) = TOPICS[index as usize % TOPICS.len()];
        let round = index as usize / TOPICS.len();
        let title = if round == 0 {
            topic.to_owned()
        } else {
            format!("{topic} {}", round + 1)
        };
        let created_ms = MS_2016 + rng.gen_range(0..4 * MS_YEAR);
        let updated_ms = created_ms + rng.gen_range(0..2 * MS_YEAR);
        let description = DESCRIPTIONS[rng.gen_range(0..DESCRIPTIONS.len())].replace("{t}", &title);
        let owner = |rng: &mut StdRng| rng.gen_ratio(4, 5).then(|| rng.gen_range(1..=25));

        let mut program_page = None;
        let mut certificate_page = None;
        if kind.has_program_page() {
            home_children += 1;
            let step = path_step(home_children)
                .ok_or_else(|| invalid("too many program pages for a 4-character path step"))?;
            let slug = slugify(&title);
            let page = PageInfo {
                id: next_page_id,
                path: format!("00010001{step}"),
                url_path: format!("/home/{slug}/"),
                slug,
                title: title.clone(),
                translation_key: uuid_from(&mut rng),
                owner_id: owner(&mut rng),
            };
            next_page_id = next_page_id
                .checked_add(1)
                .ok_or_else(|| invalid("too many pages"))?;
            if kind.has_certificate_page() {
                let cert_page = PageInfo {
                    id: next_page_id,
                    path: format!("{}0001", page.path),
                    url_path: format!("{}certificate/", page.url_path),
                    slug: "certificate".to_owned(),
                    title: format!("Certificate For {title}"),
                    translation_key: uuid_from(&mut rng),
                    owner_id: owner(&mut rng),
                };
                next_page_id = next_page_id
                    .checked_add(1)
                    .ok_or_else(|| invalid("too many pages"))?;
                certificate_page = Some(build_certificate_page(
                    &mut rng, index, kind, &title, code, cert_page,
                ));
            }
            program_page = Some(page);
        }
        plans.push(Plan {
            index,
            id: to_i32(u64::from(index) + 1, "programs")?,
            title,
            readable_id: program_readable_id(index),
            created_ms,
            updated_ms,
            description,
            program_revisions: if program_page.is_some() {
                rng.gen_range(1..=3)
            } else {
                0
            },
            program_page,
            certificate_page,
            program_revisions_first: 0,
            certificate_revisions_first: 0,
            certificate_revisions: 0,
        });
    }

    // Spread the certificate-page revisions: an even split, then pairwise jitter that keeps
    // the total (and at least 2 per page).
    let pages: Vec<usize> = (0..plans.len())
        .filter(|&i| plans[i].certificate_page.is_some())
        .collect();
    if !pages.is_empty() {
        let n = pages.len() as u64;
        let (base, rem) = (p.revisions / n, p.revisions % n);
        let mut counts: Vec<u64> = (0..n).map(|j| (base + u64::from(j < rem)).max(2)).collect();
        let mut rng = rng_for(p.seed, STREAM_ALLOC, 0);
        for pair in counts.chunks_mut(2) {
            if let [a, b] = pair {
                let d = rng.gen_range(0..=(base / 2).min(b.saturating_sub(2)));
                *a += d;
                *b -= d;
            }
        }
        for (&i, &c) in pages.iter().zip(&counts) {
            plans[i].certificate_revisions =
                u32::try_from(c).map_err(|_| invalid("too many revisions per page"))?;
        }
    }
    let mut next_revision: u64 = 1;
    for plan in &mut plans {
        plan.program_revisions_first = to_i32(next_revision, "revisions")?;
        next_revision += u64::from(plan.program_revisions);
        plan.certificate_revisions_first = to_i32(next_revision, "revisions")?;
        next_revision += u64::from(plan.certificate_revisions);
    }
    to_i32(next_revision, "revisions")?;
    Ok(plans)
}

async fn insert_programs(db: &Db, plans: &[Plan]) -> Result<(), DemoError> {
    match db {
        Db::Postgres(pool) => postgres::insert_programs(pool, plans).await,
        Db::Sqlite(pool) => sqlite::insert_programs(pool, plans).await,
    }
}

#[derive(Default)]
struct PageRows {
    id: Vec<i32>,
    path: Vec<String>,
    depth: Vec<i32>,
    numchild: Vec<i32>,
    title: Vec<String>,
    slug: Vec<String>,
    live: Vec<bool>,
    url_path: Vec<String>,
    content_type_id: Vec<i32>,
    owner_id: Vec<Option<i32>>,
    translation_key: Vec<String>,
}

impl PageRows {
    fn push(
        &mut self,
        page: &PageInfo,
        depth: i32,
        numchild: i32,
        live: bool,
        content_type_id: i32,
    ) {
        self.id.push(page.id);
        self.path.push(page.path.clone());
        self.depth.push(depth);
        self.numchild.push(numchild);
        self.title.push(page.title.clone());
        self.slug.push(page.slug.clone());
        self.live.push(live);
        self.url_path.push(page.url_path.clone());
        self.content_type_id.push(content_type_id);
        self.owner_id.push(page.owner_id);
        self.translation_key.push(page.translation_key.clone());
    }
}

#[derive(Default)]
struct CmsProgramRows<'a> {
    id: Vec<i32>,
    description: Vec<&'a str>,
    program_id: Vec<i32>,
}

#[derive(Default)]
struct CmsCertificateRows<'a> {
    id: Vec<i32>,
    product_name: Vec<&'a str>,
    institute_text: Vec<Option<&'a str>>,
    ceus: Vec<Option<&'a str>>,
    /// The StreamField values as compact JSON documents (see [`compact_json`]).
    signatories: Vec<String>,
    overrides: Vec<String>,
}

/// Page rows and the `cms_*` rows of those pages, stored together.
#[derive(Default)]
struct PageBatch<'a> {
    pages: PageRows,
    program_pages: CmsProgramRows<'a>,
    certificate_pages: CmsCertificateRows<'a>,
}

async fn insert_pages(db: &Db, plans: &[Plan], ct: ContentTypes) -> Result<(), DemoError> {
    let program_pages = plans.iter().filter(|p| p.program_page.is_some()).count();
    let mut batch = PageBatch::default();
    let mut seed_rng = rng_for(0, STREAM_PLAN, u64::MAX);
    let root = PageInfo {
        id: 1,
        path: "0001".into(),
        slug: "root".into(),
        url_path: "/".into(),
        title: "Root".into(),
        translation_key: uuid_from(&mut seed_rng),
        owner_id: None,
    };
    let home = PageInfo {
        id: 2,
        path: "00010001".into(),
        slug: "home".into(),
        url_path: "/home/".into(),
        title: "Home".into(),
        translation_key: uuid_from(&mut seed_rng),
        owner_id: None,
    };
    batch.pages.push(&root, 1, 1, true, ct.page);
    batch.pages.push(
        &home,
        2,
        to_i32(program_pages as u64, "pages")?,
        true,
        ct.page,
    );
    for chunk in plans.chunks(BATCH_ROWS / 2) {
        for plan in chunk {
            let Some(page) = &plan.program_page else {
                continue;
            };
            let cert = plan.certificate_page.as_ref();
            batch
                .pages
                .push(page, 3, i32::from(cert.is_some()), true, ct.program_page);
            batch.program_pages.id.push(page.id);
            batch
                .program_pages
                .description
                .push(plan.description.as_str());
            batch.program_pages.program_id.push(plan.id);
            if let Some(cert) = cert {
                batch
                    .pages
                    .push(&cert.page, 4, 0, cert.live, ct.certificate_page);
                let rows = &mut batch.certificate_pages;
                rows.id.push(cert.page.id);
                rows.product_name.push(cert.product_name.as_str());
                rows.institute_text.push(cert.institute_text.as_deref());
                rows.ceus.push(cert.ceus.as_deref());
                rows.signatories.push(compact_json(&cert.signatories));
                let live: Vec<&str> = cert.overrides[..cert.live_overrides]
                    .iter()
                    .map(|(block, _)| block.as_str())
                    .collect();
                rows.overrides
                    .push(compact_json(&format!("[{}]", live.join(", "))));
            }
        }
        store_pages(db, std::mem::take(&mut batch)).await?;
    }
    if !batch.pages.id.is_empty() {
        // No programs at all: only root and home.
        store_pages(db, batch).await?;
    }
    Ok(())
}

async fn store_pages(db: &Db, batch: PageBatch<'_>) -> Result<(), DemoError> {
    match db {
        Db::Postgres(pool) => postgres::insert_pages(pool, batch).await,
        Db::Sqlite(pool) => sqlite::insert_pages(pool, batch).await,
    }
}

/// Creation times of a certificate page's revisions: strictly increasing, spread from
/// shortly after the program was created up to the end of the demo period.
struct RevisionTimes {
    rng: StdRng,
    start: i64,
    step: i64,
    next: i64,
    count: i64,
}

impl RevisionTimes {
    fn new(seed: u64, plan: &Plan) -> Self {
        let mut rng = rng_for(seed, STREAM_REV_TIMES, u64::from(plan.index));
        let start = plan.created_ms + rng.gen_range(MS_DAY..60 * MS_DAY);
        let count = i64::from(plan.certificate_revisions.max(1));
        let step = ((MS_END - start) / count).max(1);
        Self {
            rng,
            start,
            step,
            next: 0,
            count,
        }
    }
}

impl Iterator for RevisionTimes {
    type Item = i64;

    fn next(&mut self) -> Option<i64> {
        if self.next >= self.count {
            return None;
        }
        let t = self.start + self.next * self.step + self.rng.gen_range(0..self.step);
        self.next += 1;
        Some(t)
    }
}

#[derive(Default)]
struct RevisionRows {
    id: Vec<i32>,
    created_ms: Vec<i64>,
    content: Vec<String>,
    object_id: Vec<String>,
    user_id: Vec<Option<i32>>,
    content_type_id: Vec<i32>,
    object_str: Vec<String>,
    bytes: usize,
}

impl RevisionRows {
    fn push(&mut self, id: i32, created_ms: i64, content: String, ct: i32, page: &PageInfo) {
        self.bytes += content.len();
        self.id.push(id);
        self.created_ms.push(created_ms);
        self.content.push(content);
        self.object_id.push(page.id.to_string());
        self.user_id.push(page.owner_id);
        self.content_type_id.push(ct);
        self.object_str.push(page.title.clone());
    }

    fn full(&self) -> bool {
        self.id.len() >= BATCH_ROWS || self.bytes >= BATCH_BYTES
    }
}

async fn insert_revisions(db: Db, rows: RevisionRows) -> Result<(), sqlx::Error> {
    let n = rows.id.len();
    match db {
        Db::Postgres(pool) => postgres::insert_revisions(pool, rows).await,
        Db::Sqlite(pool) => sqlite::insert_revisions(pool, rows).await,
    }?;
    crate::progress::add(n);
    Ok(())
}

/// What a page row learns once its revisions exist.
struct PageRevisionUpdate {
    page_id: i32,
    live_revision_id: Option<i32>,
    latest_revision_id: i32,
    first_published_ms: i64,
    last_published_ms: i64,
    latest_revision_ms: i64,
}

/// Fields shared by certificate- and program-page revision content, in Wagtail's order.
#[allow(clippy::too_many_arguments)]
fn page_content(
    page: &PageInfo,
    depth: u32,
    numchild: u32,
    live: bool,
    content_type: i32,
    previous: Option<(i32, i64)>,
    first_published_ms: Option<i64>,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("pk".into(), page.id.into());
    m.insert("live".into(), live.into());
    m.insert("path".into(), page.path.as_str().into());
    m.insert("slug".into(), page.slug.as_str().into());
    m.insert("depth".into(), depth.into());
    m.insert("owner".into(), page.owner_id.into());
    m.insert("title".into(), page.title.as_str().into());
    m.insert("locale".into(), 1.into());
    m.insert("locked".into(), false.into());
    m.insert("expired".into(), false.into());
    m.insert("alias_of".into(), Value::Null);
    m.insert("numchild".into(), numchild.into());
    m.insert("url_path".into(), page.url_path.as_str().into());
    m.insert("expire_at".into(), Value::Null);
    m.insert("locked_at".into(), Value::Null);
    m.insert("locked_by".into(), Value::Null);
    m.insert("seo_title".into(), "".into());
    m.insert("go_live_at".into(), Value::Null);
    m.insert("draft_title".into(), page.title.as_str().into());
    m.insert("content_type".into(), content_type.into());
    m.insert("live_revision".into(), previous.map(|(id, _)| id).into());
    m.insert("show_in_menus".into(), (depth == 3).into());
    m.insert("latest_revision".into(), previous.map(|(id, _)| id).into());
    m.insert(
        "translation_key".into(),
        page.translation_key.as_str().into(),
    );
    m.insert(
        "last_published_at".into(),
        previous.map(|(_, t)| django_iso(t)).into(),
    );
    m.insert(
        "first_published_at".into(),
        first_published_ms.map(django_iso).into(),
    );
    m.insert("search_description".into(), "".into());
    m.insert("wagtail_admin_comments".into(), Value::Array(Vec::new()));
    m.insert("has_unpublished_changes".into(), false.into());
    m.insert(
        "latest_revision_created_at".into(),
        previous.map(|(_, t)| django_iso(t)).into(),
    );
    m
}

/// An old, frozen certificate title for a revision created in `year`; never the live one.
fn frozen_title(rng: &mut StdRng, cert: &CertificatePage, title: &str, year: i64) -> String {
    let candidate = match rng.gen_range(0..6) {
        0 => format!("{} ({year} edition)", cert.base_title),
        1 => format!("{title} Certificate ({year})"),
        2 => format!("Certificate in {title} ({year})"),
        3 => format!("MITx {title} Program Certificate"),
        4 => format!("{title} Program Certificate"),
        _ => format!("{} - Archived", cert.base_title),
    };
    if candidate == cert.product_name {
        format!("{candidate} ({year} edition)")
    } else {
        candidate
    }
}

fn generate_revisions(
    seed: u64,
    plans: &[Plan],
    ct: ContentTypes,
    tx: &mpsc::Sender<RevisionRows>,
) -> Result<(u64, Vec<PageRevisionUpdate>), DemoError> {
    let mut rows = RevisionRows::default();
    let mut updates = Vec::new();
    let mut total: u64 = 0;
    for plan in plans {
        let Some(program_page) = &plan.program_page else {
            continue;
        };

        // Program-page revisions: small, no product_name, never referenced.
        let mut rng = rng_for(seed, STREAM_PROGRAM_REVS, u64::from(plan.index));
        let mut t = plan.created_ms + rng.gen_range(0..MS_DAY);
        let first_published = t;
        let mut previous: Option<(i32, i64)> = None;
        for k in 0..plan.program_revisions {
            let id = plan.program_revisions_first + k as i32;
            let numchild = u32::from(plan.certificate_page.is_some());
            let mut content = page_content(
                program_page,
                3,
                numchild,
                k > 0,
                ct.program_page,
                previous,
                (k > 0).then_some(first_published),
            );
            content.insert("description".into(), plan.description.as_str().into());
            content.insert("program".into(), plan.id.into());
            let content = Value::Object(content).to_string();
            rows.push(id, t, content, ct.program_page, program_page);
            previous = Some((id, t));
            t += rng.gen_range(MS_DAY..90 * MS_DAY);
            if rows.full() {
                send(tx, std::mem::take(&mut rows))?;
            }
        }
        total += u64::from(plan.program_revisions);
        if let Some((last_id, last_t)) = previous {
            updates.push(PageRevisionUpdate {
                page_id: program_page.id,
                live_revision_id: Some(last_id),
                latest_revision_id: last_id,
                first_published_ms: first_published,
                last_published_ms: last_t,
                latest_revision_ms: last_t,
            });
        }

        // Certificate-page revisions.
        let Some(cert) = &plan.certificate_page else {
            continue;
        };
        let n = plan.certificate_revisions;
        let mut rng = rng_for(seed, STREAM_CONTENT, u64::from(plan.index));
        // The oldest revisions predate the product_name field (about 1 in 10 overall).
        let without_field = rng.gen_range(0..=(n.saturating_sub(1)) / 5);
        let mut first_published_ms = None;
        let mut previous: Option<(i32, i64)> = None;
        let mut published: Option<(i32, i64)> = None;
        for (k, t) in (0..n).zip(RevisionTimes::new(seed, plan)) {
            let id = plan.certificate_revisions_first + k as i32;
            let is_draft = k + 1 == n;
            let is_live = k + 2 == n;
            let mut content = page_content(
                &cert.page,
                4,
                0,
                k > 0,
                ct.certificate_page,
                previous,
                first_published_ms,
            );
            content.insert("CEUs".into(), cert.ceus.as_deref().into());
            content.insert("overrides".into(), "".into());
            content.insert("signatories".into(), cert.signatories.as_str().into());
            content.insert("partner_logo".into(), Value::Null);
            let product_name = if is_draft {
                Some(format!("{} (Revised {})", cert.base_title, year_of(t)))
            } else if is_live {
                Some(cert.product_name.clone())
            } else if k < without_field {
                None
            } else if rng.gen_ratio(1, 8) {
                Some(cert.product_name.clone())
            } else {
                Some(frozen_title(&mut rng, cert, &plan.title, year_of(t)))
            };
            if let Some(name) = product_name {
                content.insert("product_name".into(), name.into());
            }
            content.insert(
                "institute_text".into(),
                cert.institute_text.as_deref().into(),
            );
            content.insert("partner_logo_placement".into(), Value::Null);
            if is_draft {
                content.insert("has_unpublished_changes".into(), true.into());
            }

            // Pick the number of course-run overrides that lands the document at a target
            // size of roughly 2.2-5.6 KB (as jsonb text, slightly larger).
            let base_len = escaped_len_of_doc(&content);
            let target = rng.gen_range(2_200..5_600usize);
            let mut used = 0;
            let mut len = base_len + 2;
            while used < cert.overrides.len() && len < target {
                len += cert.overrides[used].1 + if used == 0 { 0 } else { 2 };
                used += 1;
            }
            let blocks: Vec<&str> = cert.overrides[..used]
                .iter()
                .map(|(b, _)| b.as_str())
                .collect();
            content.insert(
                "overrides".into(),
                format!("[{}]", blocks.join(", ")).into(),
            );

            rows.push(
                id,
                t,
                Value::Object(content).to_string(),
                ct.certificate_page,
                &cert.page,
            );
            if first_published_ms.is_none() {
                first_published_ms = Some(t);
            }
            if !is_draft {
                published = Some((id, t));
            }
            previous = Some((id, t));
            if rows.full() {
                send(tx, std::mem::take(&mut rows))?;
            }
        }
        total += u64::from(n);
        if let (Some((latest_id, latest_t)), Some(first)) = (previous, first_published_ms) {
            let (live_id, live_t) = published.unwrap_or((latest_id, latest_t));
            updates.push(PageRevisionUpdate {
                page_id: cert.page.id,
                live_revision_id: cert.live.then_some(live_id),
                latest_revision_id: latest_id,
                first_published_ms: first,
                last_published_ms: live_t,
                latest_revision_ms: latest_t,
            });
        }
    }
    if !rows.id.is_empty() {
        send(tx, rows)?;
    }
    Ok((total, updates))
}

/// Serialised length of `doc` (its `overrides` value is an empty string).
fn escaped_len_of_doc(doc: &Map<String, Value>) -> usize {
    serde_json::to_vec(doc).map(|v| v.len()).unwrap_or(0)
}

async fn update_page_revisions(db: &Db, updates: &[PageRevisionUpdate]) -> Result<(), DemoError> {
    match db {
        Db::Postgres(pool) => postgres::update_page_revisions(pool, updates).await,
        Db::Sqlite(pool) => sqlite::update_page_revisions(pool, updates).await,
    }
}

#[derive(Default)]
struct CertificateRows {
    id: Vec<i32>,
    issued_ms: Vec<i64>,
    updated_ms: Vec<i64>,
    user_id: Vec<i32>,
    revoked: Vec<bool>,
    uuid: Vec<String>,
    revision_id: Vec<Option<i32>>,
    program_id: Vec<i32>,
}

async fn insert_certificate_rows(db: Db, rows: CertificateRows) -> Result<(), sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::insert_certificate_rows(pool, rows).await,
        Db::Sqlite(pool) => sqlite::insert_certificate_rows(pool, rows).await,
    }
}

struct CertificateWriter<'a> {
    tx: &'a mpsc::Sender<CertificateRows>,
    rows: CertificateRows,
    next_id: u64,
    stats: CertificateStats,
}

impl CertificateWriter<'_> {
    /// Adds one certificate; returns whether it is revoked.
    fn push(
        &mut self,
        rng: &mut StdRng,
        program_id: i32,
        user_id: i32,
        issued_ms: i64,
        revision_id: Option<i32>,
    ) -> Result<bool, DemoError> {
        let revoked = rng.gen_ratio(1, 15);
        let revision_id = if rng.gen_ratio(1, 25) {
            None
        } else {
            revision_id
        };
        let updated_ms = if revoked {
            (issued_ms + rng.gen_range(MS_DAY..400 * MS_DAY)).min(MS_END)
        } else {
            issued_ms
        };
        let id = to_i32(self.next_id, "certificates")?;
        self.next_id += 1;
        self.rows.id.push(id);
        self.rows.issued_ms.push(issued_ms);
        self.rows.updated_ms.push(updated_ms.max(issued_ms));
        self.rows.user_id.push(user_id);
        self.rows.revoked.push(revoked);
        self.rows.uuid.push(uuid_from(rng));
        self.rows.revision_id.push(revision_id);
        self.rows.program_id.push(program_id);
        self.stats.certificates += 1;
        self.stats.revoked += u64::from(revoked);
        self.stats.without_revision += u64::from(revision_id.is_none());
        if self.rows.id.len() >= BATCH_ROWS * 2 {
            send(self.tx, std::mem::take(&mut self.rows))?;
        }
        Ok(revoked || revision_id.is_none())
    }
}

fn generate_certificate_rows(
    seed: u64,
    plans: &[Plan],
    tx: &mpsc::Sender<CertificateRows>,
) -> Result<CertificateStats, DemoError> {
    let mut w = CertificateWriter {
        tx,
        rows: CertificateRows::default(),
        next_id: 1,
        stats: CertificateStats::default(),
    };
    for plan in plans {
        let mut rng = rng_for(seed, STREAM_CERTS, u64::from(plan.index));
        // Distinct users within a program: an arithmetic sequence with a random start.
        let user_base: u64 = rng.gen_range(1..50_000);
        let user_step: u64 = rng.gen_range(1..=7);
        let mut learner: u64 = 0;
        let mut next_user = || {
            learner += 1;
            to_i32(user_base + learner * user_step, "certificates per program")
        };
        if plan.certificate_page.is_none() {
            // Certificates issued without a certificate page: never a revision.
            for _ in 0..rng.gen_range(5..=40) {
                let user = next_user()?;
                let issued = rng.gen_range(plan.created_ms..MS_END);
                w.push(&mut rng, plan.id, user, issued, None)?;
            }
            continue;
        }
        let n = plan.certificate_revisions;
        let mut times = RevisionTimes::new(seed, plan).peekable();
        let total_weight: u32 = CERTS_PER_REVISION_WEIGHTS.iter().sum();
        for k in 0..n {
            let Some(t) = times.next() else { break };
            if k + 1 == n || !rng.gen_bool(REFERENCED_SHARE) {
                continue; // drafts are never certified; some revisions simply weren't
            }
            // Certificates are issued while the revision is the live one.
            let until = if k + 2 == n {
                MS_END
            } else {
                times.peek().copied().unwrap_or(MS_END)
            };
            let mut pick = rng.gen_range(0..total_weight);
            let mut count = 1;
            for weight in CERTS_PER_REVISION_WEIGHTS {
                if pick < weight {
                    break;
                }
                pick -= weight;
                count += 1;
            }
            let id = plan.certificate_revisions_first + k as i32;
            let mut referenced = false;
            for _ in 0..count {
                let user = next_user()?;
                let issued = if until > t {
                    rng.gen_range(t..until)
                } else {
                    t
                };
                referenced |= !w.push(&mut rng, plan.id, user, issued, Some(id))?;
            }
            w.stats.referenced_revisions += u64::from(referenced);
        }
    }
    if !w.rows.id.is_empty() {
        send(tx, w.rows)?;
    }
    Ok(w.stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_twenty_programs_cover_every_kind() {
        let kinds: Vec<ProgramKind> = (0..20).map(program_kind).collect();
        for kind in [
            ProgramKind::Normal,
            ProgramKind::PlaceholderTitle,
            ProgramKind::EmptyTitle,
            ProgramKind::NoProgramPage,
            ProgramKind::NoCertificatePage,
            ProgramKind::CertificatePageNotLive,
        ] {
            assert!(kinds.contains(&kind), "{kind:?} missing");
        }
        assert_eq!(program_kind(7), ProgramKind::PlaceholderTitle);
        assert_eq!(program_kind(8), ProgramKind::EmptyTitle);
        assert_eq!(program_kind(9), ProgramKind::NoProgramPage);
        assert_eq!(program_kind(19), ProgramKind::NoCertificatePage);
        assert_eq!(program_kind(5), ProgramKind::CertificatePageNotLive);
        assert_eq!(program_readable_id(7), "program-v1:MITx+DEMO0007");
    }

    #[test]
    fn plans_are_deterministic_and_spread_revisions() {
        let p = CertificateParams {
            programs: 25,
            revisions: 400,
            seed: 3,
        };
        let a = build_plans(&p).expect("plans");
        let b = build_plans(&p).expect("plans");
        let total: u64 = a.iter().map(|p| u64::from(p.certificate_revisions)).sum();
        assert_eq!(total, 400);
        assert!(a
            .iter()
            .filter(|p| p.certificate_page.is_some())
            .all(|p| p.certificate_revisions >= 2));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.certificate_revisions, y.certificate_revisions);
            assert_eq!(
                x.certificate_page.as_ref().map(|c| &c.product_name),
                y.certificate_page.as_ref().map(|c| &c.product_name)
            );
        }
        let placeholder = a[7].certificate_page.as_ref().expect("page");
        assert!(placeholder.product_name.starts_with(PLACEHOLDER_PREFIX));
        assert_eq!(
            a[8].certificate_page.as_ref().expect("page").product_name,
            ""
        );
        assert!(a[9].program_page.is_none());
        assert!(a[19].program_page.is_some() && a[19].certificate_page.is_none());
        assert_eq!(
            a[0].program_page.as_ref().expect("page").path,
            "000100010001"
        );
        assert_eq!(
            a[0].certificate_page.as_ref().expect("page").page.path,
            "0001000100010001"
        );
        assert_eq!(
            a[10].program_page.as_ref().expect("page").path,
            "00010001000A"
        );
    }
}
