"""Tests of the guest SDKs, templates and example plugins, built from source (issue 3)."""
