"""The relay process: everything of the Kafka path that does not run in the app.

``process`` is the relay (journals -> Kafka, the ledger, health); ``reader`` its cursor over
the journals, ``producer`` its Kafka client, ``ledger`` its record files, ``trail`` what it
keeps after delivery, ``faults`` what it does when its own files fail; ``keeper`` restarts it
when it dies; ``supervisor`` runs a keeper from gunicorn's master; ``command`` is
``openalgo-events relay``. The format it reads is ``spool.format``'s.
"""

from .process import Relay

__all__ = ["Relay"]
