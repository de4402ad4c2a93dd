"""Push notifications (`[[notify]]`): a person hears within seconds, wherever they are, that a switch
expired, a limit tripped, an account was killed.

- `messages`: what each event says: the account, the bot where there is one, what happened, what guardian
  did, and the one command to look at.
- `dialects`: how each kind of receiver is spoken to (a JSON webhook, Slack's incoming webhook, Telegram's
  `sendMessage`).
- `hub`: `Pushes`, the daemon's side: `push()` never waits; each notifier has a bounded queue and a sender
  task, storms are folded into one message per event kind and account per `min_interval_s`, failures are
  retried with backoff and counted, and the last messages are flushed at shutdown within a bound.
- `watch`: what the daemon sees (switch states, trips, a person's admin requests, the accounts' pictures,
  maintenance) turned into notes; the service calls it from where each thing is noticed.
"""

from guardian.push.hub import Pushes, TrialResult, send_tests
from guardian.push.messages import Note

__all__ = ["Note", "Pushes", "TrialResult", "send_tests"]
