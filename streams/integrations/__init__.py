"""Integrations with the tools trust & safety teams already run: Osprey (rules engine), Coop (review
tool), and ROOST policy packs (:mod:`streams.authoring.packs`). docs/integrations.md."""
