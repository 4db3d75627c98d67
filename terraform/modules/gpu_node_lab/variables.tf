variable "environment" {
  description = "Name of the environment these nodes belong to (dev, staging, prod, ...)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,31}$", var.environment))
    error_message = "environment must be 1-32 characters: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "project" {
  description = "Project name from the stacklock manifest; node (container) names start with it."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,39}$", var.project))
    error_message = "project must be 1-40 characters: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "stack_name" {
  description = "Name of the pinned stack these nodes run (manifest stacks.<name>)."
  type        = string
  nullable    = false

  validation {
    condition     = length(var.stack_name) > 0
    error_message = "stack_name must not be empty."
  }
}

variable "stack_fingerprint" {
  description = "Fingerprint of the locked stack (sha256:<64 hex>); a change replaces every node."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^sha256:[0-9a-f]{64}$", var.stack_fingerprint))
    error_message = "stack_fingerprint must look like sha256:<64 lower-case hex digits> (take it from the lock file)."
  }
}

variable "image" {
  description = "Local Docker image of a lab node (Debian 12 with systemd and sshd)."
  type        = string
  default     = "stacklock-lab:bookworm"
  nullable    = false

  validation {
    condition     = length(var.image) > 0 && !endswith(var.image, ":latest")
    error_message = "image must name a local image with an explicit tag other than latest."
  }
}

variable "node_count" {
  description = "Number of nodes in this environment (1-60)."
  type        = number
  nullable    = false

  validation {
    condition     = var.node_count >= 1 && var.node_count <= 60 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number from 1 to 60."
  }
}

variable "network_base" {
  description = "First two octets of the lab's /16 (e.g. \"10.213\"). Environment E uses <base>.(E+1).0/24; node N (from 0) of it the /30 <base>.(E+1).(4N)/30: host side .4N+1, node .4N+2."
  type        = string
  default     = "10.213"
  nullable    = false

  validation {
    condition     = can(regex("^(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])$", var.network_base))
    error_message = "network_base must be two octets such as \"10.213\"."
  }
}

variable "env_index" {
  description = "Index of this environment in the manifest (0-253); picks its /24 inside the lab network (third octet env_index+1; .0 is the mirror's)."
  type        = number
  nullable    = false

  validation {
    condition     = var.env_index >= 0 && var.env_index <= 253 && floor(var.env_index) == var.env_index
    error_message = "env_index must be a whole number from 0 to 253."
  }
}

variable "ssh_public_key" {
  description = "OpenSSH public key (the key itself, not a path) installed for root on every node."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+) [A-Za-z0-9+/=]+", trimspace(var.ssh_public_key)))
    error_message = "ssh_public_key must be an OpenSSH public key line such as \"ssh-ed25519 AAAA... comment\"."
  }
}

variable "mirror_address" {
  description = "Host address every node reaches through its own veth (the local package mirror listens there)."
  type        = string
  default     = "10.213.0.1"
  nullable    = false

  validation {
    condition     = can(cidrhost("${var.mirror_address}/32", 0))
    error_message = "mirror_address must be an IPv4 address such as 10.213.0.1."
  }
}

variable "repo_root" {
  description = "Absolute path of the stacklock repository (holds scripts/lab-node.sh); null: the repository holding this module."
  type        = string
  default     = null

  validation {
    condition     = startswith(coalesce(var.repo_root, "/"), "/")
    error_message = "repo_root must be an absolute path (or null for the repository holding this module)."
  }
}
