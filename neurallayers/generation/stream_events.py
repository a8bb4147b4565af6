"""A stream's token events, held back while a stop string may be forming, so that no token of a stop string reaches
a stream (used by generate.stream and the server's engine)."""

from __future__ import annotations

from neurallayers.generation.config import StreamEvent
from neurallayers.generation.stop_strings import _RowText


class _HeldEvents:
    """A sequence's token events, held back while their row holds back text that could still become a stop string:
    the tokens of a stop string then never reach a stream, so a stream's token events (and log-probabilities) are
    generate()'s token_ids; their text only waits, as it would anyway."""

    def __init__(self, row: _RowText) -> None:
        self.row, self.held, self.sent = row, [], 0

    def push(self, event: StreamEvent) -> list[StreamEvent]:
        """The events to send now (maybe none, maybe several) after `event`, a token the row has taken."""
        self.held.append(event)
        # a tail held back as the start of a stop string, or the first bytes of a character that may start one
        if self.row.stops and (len(self.row.text) > self.row.sent or self._may_stop()):
            return []
        return self.flush()

    def _may_stop(self) -> bool:
        """Whether text the decoder still holds may hold or start a stop string: an incomplete character, or text
        waiting for its spaces to be cleaned up (a word-piece tokenizer holds its last word so: holding its tokens
        for that alone held every event of the stream until its end). Cleaning up only drops spaces, so the text
        and stop strings are compared without them."""
        decoder = self.row.decoder
        if decoder.incomplete or decoder.uncleaned.endswith(" "):  # a stop string next may take that space: " ,"
            return True
        text = decoder.uncleaned.replace(" ", "")
        stops = [s.replace(" ", "") for s in self.row.stops] if decoder.uncleaned else []
        return any(not s or s in text or any(s.startswith(text[-k:]) for k in range(1, len(text) + 1)) for s in stops)

    def flush(self) -> list[StreamEvent]:
        out, self.held = self.held, []
        self.sent += len(out)
        return out

    def finish(self, reason: str, pending: str = "") -> tuple[list[StreamEvent], str, str]:
        """The sequence ended (`reason`): the events still to send, the last event's text and its finish reason. The
        text the decoder held to the end (a last word waiting for its spaces to be cleaned up) may hold a stop string:
        its tokens are then not sent and the reason is "stop", as generate() cuts it."""
        if not self.row.stopped:
            text = self.row.finish()
            if self.row.stopped:
                events, text = self.stopped(text)
                return events, text, "stop"
            return self.flush(), pending + text, reason
        return self.flush(), pending + self.row.finish(), reason

    def stopped(self, pending: str) -> tuple[list[StreamEvent], str]:
        """The row met a stop string: the held tokens before it (their text moved to the last event) and the text
        of the last event."""
        keep = self.held[:max(0, self.row.kept_tokens() - self.sent)]
        text = "".join(e.text for e in self.held) + pending
        self.held = []
        return [StreamEvent(text="", token_id=e.token_id, logprob=e.logprob) for e in keep], text
