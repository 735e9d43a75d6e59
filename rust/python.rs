//! The `ccop._core` extension module: the only file that knows about Python.
//!
//! Each binding converts its arguments, calls the pure-Rust function and converts the result (the jiter
//! pattern). Bytes come in borrowed (`&[u8]` from a `bytes` object, no copy) and go out as `bytes`. Only
//! whole-request work that can take milliseconds releases the interpreter; per-chunk calls take microseconds,
//! where attaching and detaching would cost more than it saves (the `PyO3` guide, "Performance").
//!
//! The module declares `gil_used = false`: the classes keep their state behind `PyO3`'s own borrow checking, so
//! they are safe on free-threaded builds (a concurrent call on the same object raises instead of racing).

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::errors;
use crate::heal;
use crate::nesting;
use crate::schema::ToolSet;
use crate::sse;
use crate::stream::{Translator, TranslatorOptions};
use crate::tokens;

create_exception!(
    ccop._core,
    CoreError,
    PyValueError,
    "Base class of the errors raised by `ccop._core`."
);
create_exception!(
    ccop._core,
    InvalidJsonError,
    CoreError,
    "The input is not valid JSON, or not the expected shape."
);

impl From<errors::CoreError> for PyErr {
    fn from(err: errors::CoreError) -> PyErr {
        let message = err.to_string();
        match err {
            errors::CoreError::InvalidJson(_) => InvalidJsonError::new_err(message),
            // The translator reports an over-long upstream line as an error event; no binding raises it.
            errors::CoreError::LineTooLong { .. } | errors::CoreError::InvalidSseEvent(_) => {
                CoreError::new_err(message)
            }
        }
    }
}

// The Python signatures spell the default line limit as a literal so that it shows in `__text_signature__`
// (and `mypy.stubtest` can compare it with the stub); keep it equal to the crate constant.
const _: () = assert!(crate::DEFAULT_MAX_LINE_BYTES == 16_777_216);

/// Bodies above this size are counted with the interpreter released (64 KiB is roughly 50 µs of work; below
/// that the detach/attach round trip is not worth it).
const DETACH_ABOVE: usize = 64 * 1024;

/// Estimate the tokens in `text`: per whitespace-separated word, ceil(chars / 4).
#[pyfunction]
#[pyo3(signature = (text, /))]
fn count_tokens(text: &str) -> usize {
    tokens::count_text(text)
}

/// Estimate the prompt tokens of an Anthropic Messages (or `count_tokens`) request body.
#[pyfunction]
#[pyo3(signature = (body, /))]
fn count_request_tokens(py: Python<'_>, body: &[u8]) -> PyResult<usize> {
    let count = if body.len() > DETACH_ABOVE {
        // `body` borrows an immutable `bytes` object that the caller keeps alive for the whole call.
        py.detach(|| tokens::count_request(body))
    } else {
        tokens::count_request(body)
    };
    Ok(count?)
}

/// The deepest nesting of arrays and objects in a JSON text (0 for a scalar); brackets in strings do not count.
#[pyfunction]
#[pyo3(signature = (json, /))]
fn json_nesting_depth(py: Python<'_>, json: &[u8]) -> usize {
    if json.len() > DETACH_ABOVE {
        // Whole request bodies of up to 32 MiB: the same reasoning as `count_request_tokens`.
        py.detach(|| nesting::nesting_depth(json))
    } else {
        nesting::nesting_depth(json)
    }
}

/// Heal tool-call arguments into a JSON object; returns (compact JSON bytes, healing kind).
#[pyfunction]
#[pyo3(signature = (arguments, /))]
fn heal_tool_arguments<'py>(arguments: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyBytes>, &'static str)> {
    let py = arguments.py();
    let (map, kind) = if let Ok(text) = arguments.cast::<PyString>() {
        heal::heal_str(&text.to_cow()?)
    } else if let Ok(bytes) = arguments.cast::<PyBytes>() {
        heal::heal_bytes(bytes.as_bytes())
    } else {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "arguments must be str or bytes, not {}",
            arguments.get_type().name()?
        )));
    };
    let json = serde_json::to_vec(&map).map_err(errors::CoreError::from)?;
    Ok((PyBytes::new(py, &json), kind.as_str()))
}

/// Encode one server-sent event `event: <event>\ndata: <data>\n\n`.
#[pyfunction]
#[pyo3(signature = (event, data, /))]
fn encode_sse<'py>(py: Python<'py>, event: &str, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    sse::validate_event(event)?;
    PyBytes::new_with(py, sse::frame_len(event, data), |buf| {
        sse::write_frame_into(buf, event, data);
        Ok(())
    })
}

/// Ollama `/api/chat` NDJSON → Anthropic Messages SSE (or one JSON message).
#[pyclass(module = "ccop._core", name = "StreamTranslator")]
struct StreamTranslator {
    inner: Translator,
    /// Reused output buffer, so steady-state feeding does not allocate.
    out: Vec<u8>,
}

impl StreamTranslator {
    fn take_output<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes = PyBytes::new(py, &self.out);
        self.out.clear();
        bytes
    }
}

#[pymethods]
impl StreamTranslator {
    #[new]
    #[pyo3(signature = (
        *,
        message_id,
        model,
        input_tokens_estimate,
        max_tokens,
        stop_sequences = Vec::new(),
        emit_sse = true,
        max_line_bytes = 16_777_216,
        tools = None,
    ))]
    #[expect(
        clippy::too_many_arguments,
        reason = "keyword-only constructor mirroring TranslatorOptions"
    )]
    fn new(
        message_id: String,
        model: String,
        input_tokens_estimate: u64,
        max_tokens: u64,
        stop_sequences: Vec<String>,
        emit_sse: bool,
        max_line_bytes: usize,
        tools: Option<&[u8]>,
    ) -> PyResult<Self> {
        // Read once here, so the per-chunk path only looks names and property types up.
        let tools = tools.map(ToolSet::from_json).transpose()?;
        let opts = TranslatorOptions {
            message_id,
            model,
            input_tokens_estimate,
            max_tokens,
            stop_sequences,
            max_line_bytes,
            emit_sse,
            tools,
        };
        Ok(Self {
            inner: Translator::new(opts),
            out: Vec::new(),
        })
    }

    /// The `message_start` frame (empty if already sent or `emit_sse` is off).
    fn start<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.inner.start(&mut self.out);
        self.take_output(py)
    }

    /// Feed raw upstream bytes; return the SSE frames they complete (`b""` when none).
    #[pyo3(signature = (chunk, /))]
    fn feed<'py>(&mut self, py: Python<'py>, chunk: &[u8]) -> Bound<'py, PyBytes> {
        self.inner.feed(chunk, &mut self.out);
        self.take_output(py)
    }

    /// Upstream EOF: flush a trailing line; report an error event if the answer was incomplete.
    fn finish<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.inner.finish(&mut self.out);
        self.take_output(py)
    }

    /// The complete non-streaming Anthropic message as JSON bytes.
    fn message<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.message_json())
    }

    /// The message finished (done chunk or stop sequence).
    #[getter]
    fn done(&self) -> bool {
        self.inner.is_done()
    }

    /// A stop sequence matched: close the upstream request.
    #[getter]
    fn stopped(&self) -> bool {
        self.inner.stopped()
    }

    /// `(Anthropic error type, message)` of the reported error, or None.
    #[getter]
    fn error(&self) -> Option<(String, String)> {
        self.inner
            .error()
            .map(|(kind, message)| (kind.to_owned(), message.to_owned()))
    }

    /// Ollama's `prompt_eval_count`, once the done chunk arrived.
    #[getter]
    fn prompt_eval_count(&self) -> Option<u64> {
        self.inner.prompt_eval_count()
    }

    /// Ollama's `eval_count`, once the done chunk arrived.
    #[getter]
    fn eval_count(&self) -> Option<u64> {
        self.inner.eval_count()
    }

    /// Tool-call counters: healing steps (one per call), schema repairs (one per field) and calls recovered from
    /// text.
    #[getter]
    fn heal_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (kind, count) in self.inner.heal_counts() {
            dict.set_item(kind, count)?;
        }
        Ok(dict)
    }
}

/// Rust core of claude-code-ollama-proxy: SSE encoding, tool-argument healing, token
/// counting and the Ollama-to-Anthropic stream translator.
#[pymodule(gil_used = false, module = "ccop")]
mod _core {
    #[pymodule_export]
    use super::{
        CoreError, InvalidJsonError, StreamTranslator, count_request_tokens, count_tokens, encode_sse,
        heal_tool_arguments, json_nesting_depth,
    };
    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", crate::pep440_version(env!("CARGO_PKG_VERSION")))
    }
}
