"""Campaigns: one spec from a chemistry to ranked battery candidates (``spec``) and their report (``report``)."""

from battgen.campaign.spec import CampaignSpec, CampaignSpecError, load_spec, parse_spec

__all__ = ["CampaignSpec", "CampaignSpecError", "load_spec", "parse_spec"]
