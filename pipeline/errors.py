"""The one base class of the errors a user fixes (bad params, missing asset or data, bad input, wrong checkpoint).

Every command and stage prints such an error as one message, without a traceback, and exits with status 2
(pipeline.stage.user_errors). Each concrete error also keeps its usual builtin base (ValueError, ...)."""


class UserError(Exception):
    """An error whose message names the input and the fix."""
