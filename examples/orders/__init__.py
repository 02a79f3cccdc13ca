"""Orders: validate → enrich → partition by customer → billing; bad orders dead-lettered."""
