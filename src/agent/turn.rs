//! One caller turn: ask the model, stream its words out as they arrive, run the tools it calls,
//! feed the results back, and repeat until it answers in text (at most `max_tool_steps` model
//! calls).
//!
//! The turn runs as its own task and reports [`TurnEvent`]s to the call session over a channel;
//! it never touches the socket. Cancelling it (dropping the future) drops the model's HTTP
//! stream and any tool still running.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use tokio::{sync::mpsc, time::Instant};

use crate::telemetry;

use super::{
    tools::{ToolInput, ToolResult},
    Agent, CallContext, ChatRequest, Delta, LlmError, Message, ToolCall,
};

pub use super::TurnId;

/// What a turn tells the session.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// Model text to speak now (part of the assistant message being written), and when its chunk
    /// was read from the model (for the relay-overhead metric).
    Content(String, ReadAt),
    /// A tool's "while running" line to speak now (not part of any message).
    Filler(String),
    /// Messages completed in this step, to append to the history in order. Content already
    /// streamed through [`TurnEvent::Content`] is repeated in the assistant message here.
    Commit(Vec<Message>),
    /// The model answered; the turn is over.
    Done,
    /// The model failed. Nothing more comes from this turn; the session speaks an apology.
    Failed(LlmError),
}

/// When a model chunk was read, carried with its text so the session can measure the relay
/// overhead (chunk read → frame written). A timestamp, not content: two events that say the
/// same text are equal whatever their times.
#[derive(Debug, Clone, Copy)]
pub struct ReadAt(pub Instant);

impl ReadAt {
    /// Now.
    pub fn now() -> Self {
        ReadAt(Instant::now())
    }
}

impl PartialEq for ReadAt {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Everything a turn needs besides the agent.
#[derive(Debug, Clone)]
pub struct TurnInput {
    /// This turn's id, echoed in every event.
    pub id: TurnId,
    /// The call.
    pub call: Arc<CallContext>,
    /// The history so far, system prompt first, ending with the caller's new message.
    pub messages: Vec<Message>,
    /// How call-control tools reach the session.
    pub control: Option<super::control::CallControl>,
    /// When the caller's words that started this turn were read (stage timings are from here).
    pub prompt_at: Instant,
    /// The keys the caller pressed, when keypresses (DTMF) started this turn: the last message
    /// then reads "The caller pressed …" for an LLM; a bot gets the digits.
    pub keys: Option<String>,
    /// The channel (`voice`, `chat`): a bot formats for it (SSML, pauses).
    pub channel: &'static str,
}

/// Where a turn's time went, for its log line and the metrics (all from the prompt).
#[derive(Debug, Default, Clone, Copy)]
struct Timings {
    /// Prompt → the first model request on the wire (or handed to a model without one).
    model_request: Option<Duration>,
    /// That request → its first chunk.
    first_token: Option<Duration>,
    /// Model calls made.
    steps: u32,
    /// Characters of model text streamed.
    chars: usize,
}

#[derive(Default)]
struct PartialCall {
    id: Option<String>,
    name: Option<String>,
    arguments: String,
}

/// Runs one turn to its end, sending `(turn id, event)` pairs to `events`. Returns early if the
/// session has gone (the receiver is dropped).
pub async fn run_turn(
    agent: Arc<Agent>,
    input: TurnInput,
    events: mpsc::Sender<(TurnId, TurnEvent)>,
) {
    let prompt_at = input.prompt_at;
    let call_sid = input.call.call_sid.clone();
    let mut timings = Timings::default();
    let outcome = turn_steps(agent, input, &events, &mut timings).await;
    let Some(outcome) = outcome else {
        return; // the session is gone: nobody to report to
    };
    let turn = prompt_at.elapsed();
    let m = telemetry::metrics();
    m.turn_duration.record(turn.as_secs_f64());
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    tracing::debug!(
        call_sid = %call_sid,
        turn = outcome.0,
        ok = outcome.1,
        prompt_to_model_request_ms = ms(timings.model_request),
        model_first_token_ms = ms(timings.first_token),
        turn_ms = turn.as_secs_f64() * 1000.0,
        steps = timings.steps,
        chars = timings.chars,
        "turn finished"
    );
}

/// The turn's steps; `Some((id, answered))` once the session was told how it ended, `None` if
/// the session went away first.
async fn turn_steps(
    agent: Arc<Agent>,
    input: TurnInput,
    events: &mpsc::Sender<(TurnId, TurnEvent)>,
    timings: &mut Timings,
) -> Option<(TurnId, bool)> {
    let TurnInput {
        id,
        call,
        mut messages,
        control,
        prompt_at,
        ..
    } = input;
    let send = |event: TurnEvent| async move { events.send((id, event)).await.is_ok() };
    let specs = agent.tools.specs();
    let mut filler_spoken = false;
    let mut content_spoken = false;
    for _step in 0..agent.max_tool_steps {
        let step = match stream_step(
            &agent,
            &messages,
            &specs,
            &send,
            &mut filler_spoken,
            content_spoken,
            (prompt_at, &mut *timings),
        )
        .await
        {
            Ok(step) => step,
            Err(StepError::SessionGone) => return None,
            Err(StepError::Llm(e)) => {
                telemetry::model_error(&e);
                return send(TurnEvent::Failed(e)).await.then_some((id, false));
            }
        };
        content_spoken |= !step.content.is_empty();
        if step.calls.is_empty() {
            let commit = vec![Message::assistant(step.content)];
            let told = send(TurnEvent::Commit(commit)).await && send(TurnEvent::Done).await;
            return told.then_some((id, true));
        }
        // Speak the "while running" lines (once each) before the tools start.
        let mut fillers: Vec<&str> = step
            .calls
            .iter()
            .filter_map(|c| agent.tools.get(&c.name)?.speak_while_running.as_deref())
            .collect();
        fillers.dedup();
        for line in fillers {
            if !send(TurnEvent::Filler(line.to_owned())).await {
                return None;
            }
        }
        let results = futures::future::join_all(
            step.calls
                .iter()
                .map(|c| run_tool(&agent, c, &call, id, control.clone())),
        )
        .await;
        // A call-control tool that succeeded ends the turn: the session speaks its own line.
        let ends_turn = step.calls.iter().zip(&results).any(|(c, result)| {
            result.is_ok() && agent.tools.get(&c.name).is_some_and(|t| t.ends_turn)
        });
        let mut commit = vec![Message::Assistant {
            content: step.content,
            tool_calls: step.calls.clone(),
            interrupted: false,
        }];
        commit.extend(
            step.calls
                .iter()
                .zip(results)
                .map(|(c, result)| Message::Tool {
                    tool_call_id: c.id.clone(),
                    content: match result {
                        Ok(text) => text,
                        Err(error) => serde_json::json!({ "error": error }).to_string(),
                    },
                }),
        );
        messages.extend(commit.iter().cloned());
        if !send(TurnEvent::Commit(commit)).await {
            return None;
        }
        if ends_turn {
            return send(TurnEvent::Done).await.then_some((id, true));
        }
    }
    let error = LlmError::TooManySteps(agent.max_tool_steps);
    telemetry::model_error(&error);
    send(TurnEvent::Failed(error)).await.then_some((id, false))
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum StepError {
    Llm(LlmError),
    /// The session stopped listening: nobody to speak to.
    SessionGone,
}

impl From<LlmError> for StepError {
    fn from(e: LlmError) -> Self {
        StepError::Llm(e)
    }
}

struct Step {
    content: String,
    calls: Vec<ToolCall>,
}

/// One model call: streams content out as it arrives and assembles tool calls by index.
async fn stream_step<F, Fut>(
    agent: &Agent,
    messages: &[Message],
    specs: &Arc<[super::ToolSpec]>,
    send: &F,
    filler_spoken: &mut bool,
    content_spoken: bool,
    (prompt_at, timings): (Instant, &mut Timings),
) -> Result<Step, StepError>
where
    F: Fn(TurnEvent) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    let deadline = started + agent.first_token_timeout;
    // Until the first chunk, a slow model gets a short filler line (once a turn), so the caller
    // knows we are there; the wait goes on up to the deadline.
    let filler = agent
        .filler
        .as_ref()
        .filter(|_| !*filler_spoken)
        .map(|(after, line)| (started + *after, line.as_str()));
    let mut filler_at = filler.map(|(at, _)| at);
    macro_rules! with_filler {
        ($fut:expr) => {{
            let fut = $fut;
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    // The filler first: when its time and the deadline have both passed (a
                    // starved runtime), the caller still hears it before the apology.
                    biased;
                    () = sleep_until_opt(filler_at) => {
                        filler_at = None;
                        *filler_spoken = true;
                        let line = filler.map(|(_, l)| l).unwrap_or_default().to_owned();
                        if !send(TurnEvent::Filler(line)).await {
                            return Err(StepError::SessionGone);
                        }
                    }
                    out = &mut fut => break out,
                }
            }
        }};
    }
    let on_the_wire = Arc::new(std::sync::OnceLock::new());
    let request = ChatRequest {
        messages: messages.to_vec(),
        tools: specs.clone(),
        on_the_wire: on_the_wire.clone(),
    };
    timings.steps += 1;
    let first_request = timings.model_request.is_none();
    let first_try = with_filler!(tokio::time::timeout_at(
        deadline,
        agent.model.stream(request.clone())
    ));
    if first_request {
        // Prompt in → the turn's first model request on the wire (or, for a model without
        // one, handed to it).
        let sent = on_the_wire.get().copied().unwrap_or(started);
        let waited = sent.saturating_duration_since(prompt_at);
        timings.model_request = Some(waited);
        telemetry::metrics()
            .prompt_to_model_request
            .record(waited.as_secs_f64());
    }
    let first_try = first_try.map_err(|_| LlmError::Timeout("first token"))?;
    let mut stream = match first_try {
        Ok(stream) => stream,
        // Nothing of the model's has been said yet, so one quick retry costs the caller little.
        Err(e) if e.is_retryable() && !content_spoken => {
            telemetry::model_error(&e);
            let pause = Duration::from_millis(rand::random_range(150..=350));
            tracing::info!(error = %e, pause_ms = pause.as_millis() as u64, "retrying the model once");
            with_filler!(tokio::time::timeout_at(deadline, async {
                tokio::time::sleep(pause).await;
                agent.model.stream(request).await
            }))
            .map_err(|_| LlmError::Timeout("first token"))??
        }
        Err(e) => return Err(e.into()),
    };
    let mut content = String::new();
    let mut partial: BTreeMap<u32, PartialCall> = BTreeMap::new();
    let mut finished = false;
    let mut first = true;
    // One timer for the gaps between chunks, pushed back after each (not a new one per chunk).
    let idle = tokio::time::sleep(agent.idle_timeout);
    tokio::pin!(idle);
    loop {
        let next = if first {
            with_filler!(tokio::time::timeout_at(deadline, stream.next())).map_err(|_| ())
        } else {
            idle.as_mut().reset(Instant::now() + agent.idle_timeout);
            tokio::select! {
                biased;
                next = stream.next() => Ok(next),
                () = &mut idle => Err(()),
            }
        };
        let Ok(next) = next else {
            return Err(LlmError::Timeout(if first { "first token" } else { "next chunk" }).into());
        };
        let read_at = Instant::now();
        if first {
            let waited = read_at - started;
            telemetry::metrics()
                .model_first_token
                .record(waited.as_secs_f64());
            timings.first_token.get_or_insert(waited);
        }
        first = false;
        match next {
            None => break,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Delta::Content(text))) => {
                if text.is_empty() {
                    continue;
                }
                content.push_str(&text);
                timings.chars += text.len();
                if !send(TurnEvent::Content(text, ReadAt(read_at))).await {
                    return Err(StepError::SessionGone);
                }
            }
            Some(Ok(Delta::ToolCall {
                index,
                id,
                name,
                arguments,
            })) => {
                let call = partial.entry(index).or_default();
                if let Some(id) = id.filter(|s| !s.is_empty()) {
                    call.id = Some(id);
                }
                if let Some(name) = name.filter(|s| !s.is_empty()) {
                    // Some servers repeat the name on every fragment; others send it once.
                    match &mut call.name {
                        Some(existing) if *existing != name => existing.push_str(&name),
                        Some(_) => {}
                        None => call.name = Some(name),
                    }
                }
                if let Some(arguments) = arguments {
                    call.arguments.push_str(&arguments);
                }
            }
            Some(Ok(Delta::Finish(_))) => finished = true,
        }
    }
    if !finished {
        return Err(LlmError::Cut.into());
    }
    let calls = partial
        .into_iter()
        .map(|(index, c)| ToolCall {
            id: c.id.unwrap_or_else(|| format!("call_{index}")),
            name: c.name.unwrap_or_default(),
            arguments: c.arguments,
        })
        .collect();
    Ok(Step { content, calls })
}

async fn run_tool(
    agent: &Agent,
    call: &ToolCall,
    context: &Arc<CallContext>,
    turn: TurnId,
    control: Option<super::control::CallControl>,
) -> ToolResult {
    let Some(tool) = agent.tools.get(&call.name) else {
        tracing::warn!(tool = %call.name, "model called an unknown tool");
        return Err(format!("there is no tool named {:?}", call.name));
    };
    let arguments = if call.arguments.trim().is_empty() {
        serde_json::json!({})
    } else {
        match serde_json::from_str::<serde_json::Value>(&call.arguments) {
            Ok(v) if v.is_object() => v,
            _ => {
                tracing::warn!(tool = %call.name, "model wrote arguments that are not a JSON object");
                return Err(
                    "the arguments were not a valid JSON object; call the tool again".into(),
                );
            }
        }
    };
    let started = Instant::now();
    let running = std::panic::AssertUnwindSafe(tool.call(ToolInput {
        arguments,
        call: context.clone(),
        turn,
        control,
    }))
    .catch_unwind();
    let result = match tokio::time::timeout(agent.tool_timeout, running).await {
        Ok(Ok(result)) => result,
        Ok(Err(_panic)) => {
            tracing::error!(tool = %call.name, "tool panicked");
            Err("the tool failed; tell the caller you could not do it".into())
        }
        Err(_) => {
            tracing::warn!(tool = %call.name, timeout_ms = agent.tool_timeout.as_millis() as u64, "tool timed out");
            Err("the tool did not answer in time; tell the caller you could not do it".into())
        }
    };
    let elapsed = started.elapsed();
    telemetry::tool_ran(&tool.spec.name, elapsed, result.is_ok());
    tracing::info!(tool = %call.name, ok = result.is_ok(), elapsed_ms = elapsed.as_millis() as u64, "tool ran");
    result
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::{future::BoxFuture, FutureExt, StreamExt};

    use super::*;
    use crate::agent::{tools::ToolRegistry, ChatModel, DeltaStream};

    /// A model that plays back scripted answers, one per request.
    struct Scripted(Mutex<Vec<Result<Vec<Delta>, LlmError>>>, bool);

    impl ChatModel for Scripted {
        fn stream(
            &self,
            _request: ChatRequest,
        ) -> BoxFuture<'static, Result<DeltaStream, LlmError>> {
            let next = self.0.lock().unwrap().remove(0);
            let hang = self.1;
            async move {
                let deltas = next?;
                let items = futures::stream::iter(deltas.into_iter().map(Ok));
                // With `hang`, the stream never ends after its deltas (a stalled server).
                let tail = futures::stream::pending().take(usize::from(hang));
                Ok(items.chain(tail).boxed())
            }
            .boxed()
        }
    }

    fn agent(answers: Vec<Result<Vec<Delta>, LlmError>>, hang: bool) -> Arc<Agent> {
        Arc::new(Agent {
            model: Arc::new(Scripted(Mutex::new(answers), hang)),
            tools: ToolRegistry::new(),
            system_prompt: "s".into(),
            first_token_timeout: Duration::from_millis(8000),
            idle_timeout: Duration::from_millis(5000),
            max_tool_steps: 3,
            filler: None,
            tool_timeout: Duration::from_secs(10),
        })
    }

    async fn events_of(agent: Arc<Agent>) -> Vec<TurnEvent> {
        let (tx, mut rx) = mpsc::channel(16);
        let input = TurnInput {
            id: 7,
            call: Arc::new(CallContext::default()),
            messages: vec![Message::User {
                content: "hi".into(),
            }],
            control: None,
            prompt_at: Instant::now(),
            keys: None,
            channel: "voice",
        };
        run_turn(agent, input, tx).await;
        let mut out = Vec::new();
        while let Ok((id, event)) = rx.try_recv() {
            assert_eq!(id, 7);
            out.push(event);
        }
        out
    }

    /// No first chunk within the first-token timeout (8 s here) fails the turn, no sooner.
    #[tokio::test(start_paused = true)]
    async fn first_token_timeout_fails_the_turn_on_time() {
        let started = Instant::now();
        let events = events_of(agent(vec![Ok(vec![])], true)).await;
        assert_eq!(
            events,
            vec![TurnEvent::Failed(LlmError::Timeout("first token"))]
        );
        assert_eq!(started.elapsed(), Duration::from_millis(8000));
    }

    /// A slow first token gets the filler line once, at its time; the wait goes on to the limit.
    #[tokio::test(start_paused = true)]
    async fn a_slow_model_gets_one_filler_line() {
        let mut agent = Arc::try_unwrap(agent(vec![Ok(vec![])], true)).ok().unwrap();
        agent.filler = Some((Duration::from_millis(1500), "One moment.".into()));
        let (tx, mut rx) = mpsc::channel(16);
        let input = TurnInput {
            id: 1,
            call: Arc::new(CallContext::default()),
            messages: vec![],
            control: None,
            prompt_at: Instant::now(),
            keys: None,
            channel: "voice",
        };
        let started = Instant::now();
        let turn = tokio::spawn(run_turn(Arc::new(agent), input, tx));
        assert_eq!(
            rx.recv().await.unwrap().1,
            TurnEvent::Filler("One moment.".into())
        );
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(
            rx.recv().await.unwrap().1,
            TurnEvent::Failed(LlmError::Timeout("first token"))
        );
        assert_eq!(started.elapsed(), Duration::from_millis(8000));
        turn.await.unwrap();
    }

    /// A gap longer than the idle timeout after some text fails the turn; the text was sent.
    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fails_a_stalled_stream() {
        let started = Instant::now();
        let events = events_of(agent(vec![Ok(vec![Delta::Content("Hi ".into())])], true)).await;
        assert_eq!(
            events,
            vec![
                TurnEvent::Content("Hi ".into(), ReadAt::now()),
                TurnEvent::Failed(LlmError::Timeout("next chunk"))
            ]
        );
        assert_eq!(started.elapsed(), Duration::from_millis(5000));
    }

    /// A retryable error is retried once after a short pause; a second one fails the turn.
    #[tokio::test(start_paused = true)]
    async fn retryable_errors_are_retried_once() {
        let busy = || LlmError::Status {
            status: 503,
            message: "busy".into(),
        };
        let ok = vec![Delta::Content("Yes.".into()), Delta::Finish("stop".into())];
        let started = Instant::now();
        let events = events_of(agent(vec![Err(busy()), Ok(ok)], false)).await;
        assert_eq!(events[0], TurnEvent::Content("Yes.".into(), ReadAt::now()));
        assert_eq!(events.last(), Some(&TurnEvent::Done));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited <= Duration::from_millis(350),
            "{waited:?}"
        );

        let events = events_of(agent(vec![Err(busy()), Err(busy())], false)).await;
        assert_eq!(events, vec![TurnEvent::Failed(busy())]);
        let bad = LlmError::Status {
            status: 400,
            message: "bad".into(),
        };
        let events = events_of(agent(vec![Err(bad.clone())], false)).await;
        assert_eq!(events, vec![TurnEvent::Failed(bad)], "a 400 is not retried");
    }

    /// Once the model's words have been spoken in a turn, a failure is not retried (the caller
    /// would wait in silence for a second try of a reply already under way).
    #[tokio::test(start_paused = true)]
    async fn no_retry_once_the_turn_has_spoken() {
        let step = vec![
            Delta::Content("Let me check. ".into()),
            Delta::ToolCall {
                index: 0,
                id: Some("c".into()),
                name: Some("nope".into()),
                arguments: Some("{}".into()),
            },
            Delta::Finish("tool_calls".into()),
        ];
        let busy = LlmError::Status {
            status: 503,
            message: "busy".into(),
        };
        let events = events_of(agent(vec![Ok(step), Err(busy.clone())], false)).await;
        assert_eq!(
            events.first(),
            Some(&TurnEvent::Content("Let me check. ".into(), ReadAt::now()))
        );
        assert_eq!(
            events.last(),
            Some(&TurnEvent::Failed(busy)),
            "no second request was made"
        );
    }

    /// A model that keeps calling tools is stopped after `max_tool_steps` calls.
    #[tokio::test(start_paused = true)]
    async fn endless_tool_calls_are_bounded() {
        let call = || {
            Ok(vec![
                Delta::ToolCall {
                    index: 0,
                    id: Some("c".into()),
                    name: Some("nope".into()),
                    arguments: Some("{}".into()),
                },
                Delta::Finish("tool_calls".into()),
            ])
        };
        let events = events_of(agent(vec![call(), call(), call()], false)).await;
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, TurnEvent::Commit(_)))
                .count(),
            3
        );
        assert_eq!(
            events.last(),
            Some(&TurnEvent::Failed(LlmError::TooManySteps(3)))
        );
    }
}
