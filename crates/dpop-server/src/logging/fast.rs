//! The text lines' field formatter, the JSON lines' event formatter and the timestamp of
//! every line, written without `core::fmt`'s general machinery for the values that make
//! up nearly every line.
//!
//! Why: the gateway writes an access line per request, and with tracing-subscriber's own
//! formatters that line cost about as many instructions as proxying the request (text:
//! each field through `Debug`, with styling calls around its name even when styling is
//! off; JSON: every value through serde and a UTF-8 check per write; both: the timestamp
//! through a dozen `write!`s). The output is theirs byte for byte (the tests below compare
//! the two); what this module does not handle itself (lines with ANSI styling, JSON lines
//! inside a span, events bridged from the `log` crate, values of other types) is handed to
//! tracing-subscriber's own code.

use core::cell::Cell;
use core::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Json, Writer};
use tracing_subscriber::fmt::time::{self, FormatTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Fields as `name=value`, separated by spaces: [`DefaultFields`]'s output.
///
/// [`DefaultFields`]: tracing_subscriber::fmt::format::DefaultFields
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Fields;

impl<'w> MakeVisitor<Writer<'w>> for Fields {
    type Visitor = FieldsVisitor<'w>;

    fn make_visitor(&self, target: Writer<'w>) -> FieldsVisitor<'w> {
        FieldsVisitor {
            fast: !target.has_ansi_escapes(),
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// The visitor of [`Fields`].
#[derive(Debug)]
pub(crate) struct FieldsVisitor<'w> {
    writer: Writer<'w>,
    /// No styling: the plain forms below are the default visitor's output.
    fast: bool,
    is_empty: bool,
    result: fmt::Result,
}

impl FieldsVisitor<'_> {
    /// The field's name as written, when this visitor writes the field itself: not the
    /// message (written bare, with escaping of its own), not a raw identifier (`r#` is
    /// dropped), not `log.` metadata (left out), and not when styling is on.
    fn plain_name(&self, field: &Field) -> Option<&'static str> {
        let name = field.name();
        let special = name == "message" || name.starts_with("r#") || name.starts_with("log.");
        (self.fast && !special && self.result.is_ok()).then_some(name)
    }

    /// Writes ` name=` (the space between fields) and then `value`.
    fn write(&mut self, name: &str, value: &str) {
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.result = self.writer.write_char(' ');
        }
        self.result = self
            .result
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='))
            .and_then(|()| self.writer.write_str(value));
    }

    /// Lets the default visitor write the field.
    fn delegate(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        // The default visitor leaves `log.` fields out and writes every other one.
        if field.name().starts_with("log.") {
            return;
        }
        #[cfg(test)]
        tests::count(&tests::DELEGATED);
        let mut inner = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut inner);
        self.result = inner.finish();
        self.is_empty = false;
    }
}

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match self.plain_name(field) {
            // `Debug` of a string: quoted, and unchanged when every byte is printable ASCII
            // other than the quote and the backslash (the apostrophe is left to `Debug`
            // too, to stay clear of its rules).
            Some(name)
                if value
                    .bytes()
                    .all(|b| matches!(b, b' '..=b'~') && !matches!(b, b'"' | b'\\' | b'\'')) =>
            {
                self.write(name, "\"");
                self.result = self
                    .result
                    .and_then(|()| self.writer.write_str(value))
                    .and_then(|()| self.writer.write_char('"'));
            }
            _ => self.delegate(field, |v| v.record_str(field, value)),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match self.plain_name(field) {
            Some(name) => self.write(name, itoa::Buffer::new().format(value)),
            None => self.delegate(field, |v| v.record_u64(field, value)),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match self.plain_name(field) {
            Some(name) => self.write(name, itoa::Buffer::new().format(value)),
            None => self.delegate(field, |v| v.record_i64(field, value)),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        match self.plain_name(field) {
            Some(name) => self.write(name, if value { "true" } else { "false" }),
            None => self.delegate(field, |v| v.record_bool(field, value)),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let mut buffer = zmij::Buffer::new();
        match (self.plain_name(field), plain_float(&mut buffer, value)) {
            (Some(name), Some(text)) => self.write(name, text),
            _ => self.delegate(field, |v| v.record_f64(field, value)),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(field, |v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.delegate(field, |v| v.record_debug(field, value));
    }
}

/// `value` as `Debug` writes it, when zmij's text is certainly the same.
///
/// Both write the shortest decimal that reads back as `value`, in plain notation from 1e-4
/// up to 1e16 (and for zero); outside that range they choose notations differently. With
/// up to 15 significant digits that decimal is the only one of its length near enough
/// (neighbours of that length lie further apart than the doubles either side of `value`),
/// so the two agree; with 16 or 17 they may round an exact tie differently.
fn plain_float(buffer: &mut zmij::Buffer, value: f64) -> Option<&str> {
    if value != 0.0 && !(1e-4..1e16).contains(&value.abs()) {
        return None;
    }
    let text = buffer.format_finite(value);
    (text.bytes().filter(u8::is_ascii_digit).count() <= 15).then_some(text)
}

impl VisitOutput<fmt::Result> for FieldsVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for FieldsVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// JSON lines: tracing-subscriber's [`Json`] format with its default settings (the
/// timestamp from `T`, the level, the fields, the target, and the spans when there are).
#[derive(Debug)]
pub(crate) struct JsonLines<T = UtcMicros> {
    timer: T,
    /// For the lines this formatter does not write itself.
    general: Format<Json, T>,
}

impl JsonLines {
    pub(crate) fn new() -> Self {
        Self::with_timer(UtcMicros)
    }
}

impl<T: FormatTime + Clone> JsonLines<T> {
    fn with_timer(timer: T) -> Self {
        Self {
            general: tracing_subscriber::fmt::format()
                .json()
                .with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for JsonLines<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let in_span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current())
            .is_some();
        // An event from the `log` crate names its real target and level in these fields,
        // which the general formatter reads.
        let from_log = meta.fields().field("log.target").is_some();
        if in_span || from_log {
            #[cfg(test)]
            tests::count(&tests::GENERAL);
            return self.general.format_event(ctx, writer, event);
        }
        // The timestamp is written into the line as it is formatted, escaped on the way.
        writer.write_str("{\"timestamp\":\"")?;
        self.timer
            .format_time(&mut Writer::new(&mut JsonEscaped(&mut writer)))?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_str("\",\"fields\":{")?;
        let mut fields = JsonFields {
            writer: writer.by_ref(),
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("},\"target\":")?;
        json_string(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// An event's fields as the members of a JSON object, as tracing-serde and serde_json
/// write them: strings escaped, integers and booleans bare, floats as zmij (serde_json's) writes them
/// (`null` when not finite), and any other value its `Debug` text as a string.
struct JsonFields<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl JsonFields<'_> {
    /// Writes `,"name":` (no comma before the first), then has `value` write the value.
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let comma = if self.first { "" } else { "," };
        self.first = false;
        self.result = self
            .writer
            .write_str(comma)
            .and_then(|()| json_string(&mut self.writer, field.name()))
            .and_then(|()| self.writer.write_char(':'))
            .and_then(|()| value(&mut self.writer));
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| json_string(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, |w| {
            if value.is_finite() {
                w.write_str(zmij::Buffer::new().format_finite(value))
            } else {
                w.write_str("null")
            }
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            fmt::write(&mut JsonEscaped(w), format_args!("{value:?}"))?;
            w.write_char('"')
        });
    }
}

/// `text` as a JSON string.
fn json_string(writer: &mut Writer<'_>, text: &str) -> fmt::Result {
    writer.write_char('"')?;
    fmt::Write::write_str(&mut JsonEscaped(writer), text)?;
    writer.write_char('"')
}

/// Writes what it is given escaped for a JSON string, as serde_json escapes: the quote,
/// the backslash and the control characters below U+0020 (with the short forms `\b`,
/// `\t`, `\n`, `\f`, `\r`, else `\u00xx`); everything else as it is.
struct JsonEscaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for JsonEscaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut start = 0;
        for (at, byte) in text.bytes().enumerate() {
            let short = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..0x20 => "",
                _ => continue,
            };
            // Every byte matched above is ASCII, so `at` is a character boundary.
            self.0.write_str(text.get(start..at).ok_or(fmt::Error)?)?;
            start = at + 1;
            if short.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let escape = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ];
                self.0
                    .write_str(core::str::from_utf8(&escape).map_err(|_| fmt::Error)?)?;
            } else {
                self.0.write_str(short)?;
            }
        }
        self.0.write_str(text.get(start..).ok_or(fmt::Error)?)
    }
}

/// The time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC: [`time::SystemTime`]'s output, with
/// the part up to the second formatted once per second and thread.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UtcMicros;

/// The first second of the year 10000, past which the year takes more than four digits.
const YEAR_10000: u64 = 253_402_300_800;

thread_local! {
    /// The last second formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS.`.
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

impl FormatTime for UtcMicros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) if since.as_secs() < YEAR_10000 => {
                let line = stamp(since.as_secs(), since.subsec_micros());
                // Only ASCII digits and separators are written into `line`.
                w.write_str(core::str::from_utf8(&line).map_err(|_| fmt::Error)?)
            }
            // Before 1970 or after 9999: the general formatter.
            _ => {
                #[cfg(test)]
                tests::count(&tests::GENERAL_TIME);
                time::SystemTime.format_time(w)
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for `secs` since the epoch (below [`YEAR_10000`]) and
/// `micros`.
fn stamp(secs: u64, micros: u32) -> [u8; 27] {
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        prefix = second(secs);
        SECOND.set((secs, prefix));
    }
    let mut line = [0; 27];
    line[..20].copy_from_slice(&prefix);
    digits(&mut line[20..26], u64::from(micros));
    line[26] = b'Z';
    line
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch (below [`YEAR_10000`]).
fn second(secs: u64) -> [u8; 20] {
    let t = dpop_core::UnixTime::from_secs(secs).to_utc();
    let mut out = *b"0000-00-00T00:00:00.";
    digits(&mut out[0..4], t.year);
    digits(&mut out[5..7], t.month);
    digits(&mut out[8..10], t.day);
    digits(&mut out[11..13], t.hour);
    digits(&mut out[14..16], t.minute);
    digits(&mut out[17..19], t.second);
    out
}

/// `value`'s last `out.len()` decimal digits, zero-padded.
fn digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b"0123456789"[usize::try_from(value % 10).unwrap_or(0)];
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    thread_local! {
        /// Fields handed to the default visitor, on this thread.
        pub(super) static DELEGATED: Cell<u32> = const { Cell::new(0) };
        /// JSON lines handed to the general formatter.
        pub(super) static GENERAL: Cell<u32> = const { Cell::new(0) };
        /// Timestamps handed to the general timer.
        pub(super) static GENERAL_TIME: Cell<u32> = const { Cell::new(0) };
    }

    pub(super) fn count(counter: &'static std::thread::LocalKey<Cell<u32>>) {
        counter.set(counter.get() + 1);
    }

    /// How often `f` made each path hand over: (fields, JSON lines, timestamps).
    fn handed_over(f: impl FnOnce()) -> (u32, u32, u32) {
        for counter in [&DELEGATED, &GENERAL, &GENERAL_TIME] {
            counter.set(0);
        }
        f();
        (DELEGATED.get(), GENERAL.get(), GENERAL_TIME.get())
    }

    /// An access line as the gateway writes it.
    fn access_line() {
        let peer: std::net::SocketAddr = ([10, 0, 0, 7], 51_544).into();
        tracing::info!(
            target: "dpop::access",
            peer = Some(tracing::field::display(peer)),
            method = "GET",
            path = Some("/v1/items/7"),
            status = 200_u16,
            duration_ms = 1.92,
            outcome = "accepted",
            reason = None::<&str>,
            client_id = Some("svc"),
            sub = Some("user-1"),
            jkt = Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"),
            route = "/v1",
            upstream = Some("http://127.0.0.1:8080"),
            upstream_ms = Some(1.31),
            "request"
        );
    }

    #[test]
    fn the_access_line_takes_the_fast_paths() {
        // Text: only the address (a `Display` value) and the message go to the default
        // visitor; the timestamp is this module's.
        let out = Captured::default();
        let text = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .with_timer(UtcMicros)
            .fmt_fields(Fields)
            .finish();
        let counts = handed_over(|| tracing::subscriber::with_default(text, access_line));
        assert_eq!(counts, (2, 0, 0), "{}", out.text());
        assert!(
            out.text()
                .contains(" status=200 duration_ms=1.92 outcome=\"accepted\"")
        );
        // JSON: the whole line is this module's.
        let out = Captured::default();
        let json = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .json()
            .event_format(JsonLines::new())
            .finish();
        let counts = handed_over(|| tracing::subscriber::with_default(json, access_line));
        assert_eq!(counts, (0, 0, 0), "{}", out.text());
        assert!(
            out.text()
                .contains(r#""status":200,"duration_ms":1.92,"outcome":"accepted""#)
        );
    }

    #[test]
    fn json_lines_in_spans_and_of_the_log_crate_go_to_the_general_formatter() {
        let json = tracing_subscriber::fmt()
            .with_writer(Captured::default())
            .json()
            .event_format(JsonLines::new())
            .finish();
        let counts = handed_over(|| {
            tracing::subscriber::with_default(json, || {
                let span = tracing::info_span!("outer");
                tracing::info!(target: "t", parent: &span, "explicit parent");
                span.in_scope(|| tracing::info!(target: "t", "current span"));
                tracing::info!(target: "t", kind = "log", "log.target" = "other");
                tracing::info!(target: "t", "none of those");
            });
        });
        assert_eq!(counts, (0, 3, 0));
    }

    /// Lines written by a subscriber, kept for the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().map(|b| b.clone()).unwrap_or_default())
                .unwrap_or_default()
        }
    }

    #[derive(Debug)]
    struct Failure;
    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("it \"broke\"\n\u{1b}[31m")
        }
    }
    impl std::error::Error for Failure {}

    /// Every kind of value, with the awkward cases of each.
    fn events() {
        let strings = [
            "",
            "plain",
            "with space",
            "quote\"",
            "back\\slash",
            "it's",
            "new\nline",
            "tab\t",
            "\u{1b}[31mred",
            "é",
            "日本",
            "\u{301}accent",
            "\u{7f}",
            "~!@#$%^&*()_+{}|:<>?",
        ];
        for s in strings {
            tracing::info!(target: "t", path = s, other = s, "request {s}");
        }
        for n in [0_u64, 1, 9, 10, 200, 65_535, u64::MAX] {
            tracing::info!(target: "t", status = n, count = n);
        }
        for n in [0_i64, -1, i64::MIN, i64::MAX] {
            tracing::info!(target: "t", delta = n);
        }
        tracing::info!(target: "t", yes = true, no = false);
        let floats = [
            0.0,
            -0.0,
            0.001,
            0.123,
            1.0,
            12.5,
            1e-4,
            9.99e-5,
            1e-5,
            1.5e-7,
            1e15,
            9.9e15,
            1e16,
            1.5e16,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            0.1 + 0.2,
            1.0 / 3.0,
            -2.5,
            -1e-4,
            -1e20,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            123_456.789,
        ];
        for x in floats {
            tracing::info!(target: "t", duration_ms = x);
        }
        let peer: std::net::SocketAddr = ([127, 0, 0, 1], 8080).into();
        tracing::info!(target: "t", peer = %peer, dbg = ?Some("x"), opt = Some("y"), none = None::<&str>);
        tracing::info!(target: "t", r#type = "raw", r#loop = 3_u64);
        tracing::info!(target: "t", error = &Failure as &(dyn std::error::Error + 'static));
        tracing::info!(target: "t", "only a message");
        tracing::info!(log.target = "x", log.line = 3_u64, after = 2_u64);
        tracing::info!(target: "t", before = 0_u64, "log.target" = "x", after = 2_u64);
        tracing::info!(target: "t", first = 1_u64, "log.file" = "f.rs", after = "x");
        let late = tracing::info_span!("late", v = tracing::field::Empty, w = 1_u64);
        late.record("v", "recorded later");
        tracing::info!(target: "t", parent: &late, "explicit parent");
        let span = tracing::info_span!("span", id = 7_u64, name = "a \"b\"", f = 0.5);
        let _entered = span.enter();
        tracing::info!(target: "t", inside = "yes");
        tracing::info!(target: "t", message = "explicit", after = 1_u64);
    }

    /// The lines of `events`, timestamps left out, through `fields` or the default.
    fn lines(ours: bool, ansi: bool) -> String {
        let out = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(ansi)
            .without_time();
        if ours {
            tracing::subscriber::with_default(builder.fmt_fields(Fields).finish(), events);
        } else {
            tracing::subscriber::with_default(builder.finish(), events);
        }
        out.text()
    }

    /// A constant time, for comparing whole lines.
    #[derive(Clone, Copy)]
    struct Fixed;
    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-05T00:00:00.000001Z")
        }
    }

    /// The lines of `events` as JSON, through `JsonLines` or the default.
    fn json_lines(ours: bool) -> String {
        let out = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_timer(Fixed)
            .json();
        if ours {
            let subscriber = builder.event_format(JsonLines::with_timer(Fixed)).finish();
            tracing::subscriber::with_default(subscriber, events);
        } else {
            tracing::subscriber::with_default(builder.finish(), events);
        }
        out.text()
    }

    #[test]
    fn json_lines_are_written_as_the_default_formatter_writes_them() {
        let theirs = json_lines(false);
        assert!(theirs.lines().count() > 55, "{theirs}");
        // Lines inside the span are the general formatter's, with the span.
        assert!(theirs.contains("\"spans\":["), "{theirs}");
        for line in theirs.lines() {
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            assert!(parsed.is_ok(), "{parsed:?}: {line}");
        }
        assert_eq!(json_lines(true), theirs);
    }

    #[test]
    fn fields_are_written_as_the_default_formatter_writes_them() {
        let theirs = lines(false, false);
        assert!(theirs.lines().count() > 60, "{theirs}");
        assert_eq!(lines(true, false), theirs);
    }

    #[test]
    fn styled_lines_are_the_default_formatters() {
        let theirs = lines(false, true);
        assert!(theirs.contains('\u{1b}'));
        assert_eq!(lines(true, true), theirs);
    }

    #[test]
    fn floats_in_the_plain_range_are_debugs() {
        // Every binary exponent of the plain range, with varied mantissas.
        let mut x = 1e-4_f64;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut checked = 0_u32;
        while x < 1e16 {
            for _ in 0..256 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let y = f64::from_bits((x.to_bits() & !0xf_ffff_ffff_ffff) | (seed >> 12));
                // Random mantissas, and the same rounded to 3, 6, 9 and 12 decimals.
                for z in [
                    y,
                    (y * 1e3).round() / 1e3,
                    (y * 1e6).round() / 1e6,
                    (y * 1e9).round() / 1e9,
                    (y * 1e12).round() / 1e12,
                ] {
                    for z in [z, -z] {
                        if let Some(text) = plain_float(&mut zmij::Buffer::new(), z) {
                            checked += 1;
                            assert_eq!(text, format!("{z:?}"));
                        }
                    }
                }
            }
            x *= 2.0;
        }
        assert!(checked > 50_000, "{checked}");
        // Durations in milliseconds rounded to the microsecond, as the access log has them.
        for micros in (0..2_000_000_u32).step_by(7) {
            let ms = f64::from(micros) / 1000.0;
            if ms != 0.0 && ms < 1e-4 {
                continue;
            }
            assert_eq!(
                plain_float(&mut zmij::Buffer::new(), ms),
                Some(format!("{ms:?}").as_str())
            );
        }
    }

    #[test]
    fn stamps_of_known_instants() {
        for (secs, micros, text) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 1, "2000-02-29T00:00:00.000001Z"),
            (951_868_799, 999_999, "2000-02-29T23:59:59.999999Z"),
            (1_709_251_199, 500_000, "2024-02-29T23:59:59.500000Z"),
            (1_796_428_800, 123_456, "2026-12-05T00:00:00.123456Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000000Z"),
            (4_107_542_399, 0, "2100-02-28T23:59:59.000000Z"),
            (YEAR_10000 - 1, 999_999, "9999-12-31T23:59:59.999999Z"),
        ] {
            assert_eq!(
                core::str::from_utf8(&stamp(secs, micros)),
                Ok(text),
                "{secs}"
            );
            // Again, from this thread's cached second, at another microsecond.
            let other = (micros + 250_001) % 1_000_000;
            let expected = format!("{}{other:06}Z", &text[..20]);
            assert_eq!(
                core::str::from_utf8(&stamp(secs, other)),
                Ok(expected.as_str()),
                "{secs}"
            );
        }
    }

    #[test]
    fn the_timer_writes_what_the_default_timer_writes() {
        let format = |timer: &dyn FormatTime| {
            let mut text = String::new();
            timer
                .format_time(&mut Writer::new(&mut text))
                .map(|()| text)
        };
        let before = format(&UtcMicros);
        let theirs = format(&time::SystemTime);
        let after = format(&UtcMicros);
        let (before, theirs, after) = (
            before.unwrap_or_default(),
            theirs.unwrap_or_default(),
            after.unwrap_or_default(),
        );
        assert_eq!(theirs.len(), 27, "{theirs}");
        assert_eq!(before.len(), 27, "{before}");
        // Same shape, and the same instant to within the calls' order.
        assert!(
            before <= theirs && theirs <= after,
            "{before} {theirs} {after}"
        );
    }
}
