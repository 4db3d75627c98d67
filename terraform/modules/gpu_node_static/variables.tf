variable "environment" {
  description = "Name of the environment these hosts belong to (dev, staging, prod, ...)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,31}$", var.environment))
    error_message = "environment must be 1-32 characters: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "project" {
  description = "Project name from the stacklock manifest."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,62}$", var.project))
    error_message = "project must be 1-63 characters: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "stack_name" {
  description = "Name of the pinned stack these hosts run (manifest stacks.<name>)."
  type        = string
  nullable    = false

  validation {
    condition     = length(var.stack_name) > 0
    error_message = "stack_name must not be empty."
  }
}

variable "stack_fingerprint" {
  description = "Fingerprint of the locked stack (sha256:<64 hex>); a change replaces every host record, so plan shows it."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^sha256:[0-9a-f]{64}$", var.stack_fingerprint))
    error_message = "stack_fingerprint must look like sha256:<64 lower-case hex digits> (take it from the lock file)."
  }
}

variable "hosts" {
  description = "Existing hosts of the environment: name, SSH address, SSH user and SSH port of each."
  type = list(object({
    name    = string
    address = string
    user    = string
    port    = number
  }))
  nullable = false

  validation {
    condition     = length(var.hosts) > 0
    error_message = "hosts must list at least one host."
  }

  validation {
    condition     = length(distinct([for h in var.hosts : h.name])) == length(var.hosts)
    error_message = "host names must be unique."
  }

  validation {
    condition     = alltrue([for h in var.hosts : can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*$", h.name))])
    error_message = "each host name must start with a letter or digit and contain only letters, digits, '.', '_' and '-'."
  }

  validation {
    condition     = alltrue([for h in var.hosts : length(trimspace(h.address)) > 0 && length(trimspace(h.user)) > 0])
    error_message = "each host needs a non-empty address and user."
  }

  validation {
    condition     = alltrue([for h in var.hosts : h.port >= 1 && h.port <= 65535 && floor(h.port) == h.port])
    error_message = "each host port must be a whole number from 1 to 65535."
  }
}
