"""Prefect flows and deployments around the facekit lineage (facekit itself never imports Prefect)."""
