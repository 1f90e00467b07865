"""The rule table of DESIGN.md, one pure module per kind of key.

:mod:`consumers.rules.conversation_rules` judges a conversation key (every row of a
phone + channel, its session file, its clocks); :mod:`consumers.rules.gateway_session_rules`
judges a gateway session (lease, queue, parked messages).  Each returns a
verdict -- the inconsistencies found and the actions that end them -- and is
the only place a rule is written: the handlers, the projections, ``audit``,
``inspect`` and the demo all call it.
"""
