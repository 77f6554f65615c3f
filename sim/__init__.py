"""The flywheel, replayed: real text as production traffic through a real running server, over simulated days.

A development tool, not product (``flywheel simulate`` loads it from a clone; matplotlib comes with the ``sim``
extra). Each simulated day, several tenants send traffic through ``POST /v1/predict``; users send feedback on part of
it, late, with a known share of wrong labels (some from one careless source); then the scheduler's own jobs run on
the simulated clock (``sim.night``): the monitoring pass, the nightly pipeline, the training worker with its gate.

Three arms replay the same traffic from the same seed on three fresh databases:

- ``cleaned``: noisy feedback, label quality on (label issues are left out of training);
- ``uncleaned``: the same noisy feedback, label quality off;
- ``true_labels``: the same items with their true labels, as the ceiling.

With ``review_budget`` N, a human reviewer decides N labels a day per task in both noisy arms, between the
label-quality pass and the night's training, through ``POST /v1/review/{id}`` with the true label (``sim.reviewer``).

Each day the shared champion of every arm is scored on the untouched test split.

The modules, in the order a run uses them: ``scenario`` (the configuration and the simulated clock), ``traffic``
(the seeded plan of traffic and feedback), ``harness`` (a fresh database, the web app on a socket, an HTTP client),
``replay`` (one arm, day by day), ``night`` (the scheduler's jobs), ``reviewer``, ``measures`` (what a day is scored
by), ``experiment`` (every arm, the results folder), ``report`` (the table and the summary), ``figures`` (the
charts) and ``command`` (the ``flywheel simulate`` command).
"""
