"""Interventions: what a platform does with the labels. A decision per content event (the
consumer's last output, :mod:`streams.interventions.actions`) and escalation of repeat offenders
per actor (its own faust-streaming service, :mod:`streams.interventions.escalate`). See
docs/interventions.md."""
